// Command hashvectors computes the Plan hash the way the Go system-upgrade-controller does, for
// the Plans in tests/vectors/plan-hash.json, and writes the results into that file (`-write`) or
// reports differences (default). The Rust controller's unit tests check their own hash against
// these values, so nodes the Go controller labelled are not upgraded again after a takeover.
//
// The Plan types below follow the Go controller's field types and JSON tags (its wire format):
// what matters is which fields are pointers and which are `omitempty`, because the hash looks
// up the paths named in the upgrade.cattle.io/digest annotation in the JSON that Go's
// encoding/json makes of those typed structs.
package main

import (
	"bytes"
	"crypto/sha256"
	"encoding/json"
	"flag"
	"fmt"
	"os"
	"strings"

	"github.com/rancher/wrangler/v3/pkg/data"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/kubectl/pkg/util/hash"
)

type plan struct {
	metav1.TypeMeta   `json:",inline"`
	metav1.ObjectMeta `json:"metadata,omitempty"`
	Spec              planSpec   `json:"spec,omitempty"`
	Status            planStatus `json:"status,omitempty"`
}

type planSpec struct {
	Concurrency           int64                         `json:"concurrency,omitempty"`
	JobActiveDeadlineSecs *int64                        `json:"jobActiveDeadlineSecs,omitempty"`
	NodeSelector          *metav1.LabelSelector         `json:"nodeSelector,omitempty"`
	ServiceAccountName    string                        `json:"serviceAccountName,omitempty"`
	Channel               string                        `json:"channel,omitempty"`
	Version               string                        `json:"version,omitempty"`
	Secrets               []secretSpec                  `json:"secrets,omitempty"`
	Tolerations           []corev1.Toleration           `json:"tolerations,omitempty"`
	Exclusive             bool                          `json:"exclusive,omitempty"`
	Window                *windowSpec                   `json:"window,omitempty"`
	Prepare               *containerSpec                `json:"prepare,omitempty"`
	Upgrade               *containerSpec                `json:"upgrade"`
	Cordon                bool                          `json:"cordon,omitempty"`
	Drain                 *drainSpec                    `json:"drain,omitempty"`
	ImagePullSecrets      []corev1.LocalObjectReference `json:"imagePullSecrets,omitempty"`
	PostCompleteDelay     *metav1.Duration              `json:"postCompleteDelay,omitempty"`
	PriorityClassName     string                        `json:"priorityClassName,omitempty"`
	PostCompleteLabels    map[string]string             `json:"postCompleteLabels,omitempty"`
}

type condition struct {
	Type               string `json:"type"`
	Status             string `json:"status"`
	LastUpdateTime     string `json:"lastUpdateTime,omitempty"`
	LastTransitionTime string `json:"lastTransitionTime,omitempty"`
	Reason             string `json:"reason,omitempty"`
	Message            string `json:"message,omitempty"`
}

type planStatus struct {
	Conditions    []condition `json:"conditions,omitempty"`
	LatestVersion string      `json:"latestVersion,omitempty"`
	LatestHash    string      `json:"latestHash,omitempty"`
	Applying      []string    `json:"applying,omitempty"`
}

type containerSpec struct {
	Image           string                  `json:"image"`
	Command         []string                `json:"command,omitempty"`
	Args            []string                `json:"args,omitempty"`
	Env             []corev1.EnvVar         `json:"envs,omitempty"`
	EnvFrom         []corev1.EnvFromSource  `json:"envFrom,omitempty"`
	Volumes         []volumeSpec            `json:"volumes,omitempty"`
	SecurityContext *corev1.SecurityContext `json:"securityContext,omitempty"`
}

type volumeSpec struct {
	Name        string `json:"name"`
	Source      string `json:"source"`
	Destination string `json:"destination"`
}

type drainSpec struct {
	Timeout                  *intstr.IntOrString   `json:"timeout,omitempty"`
	GracePeriod              *int32                `json:"gracePeriod,omitempty"`
	DeleteLocalData          *bool                 `json:"deleteLocalData,omitempty"`
	DeleteEmptydirData       *bool                 `json:"deleteEmptydirData,omitempty"`
	IgnoreDaemonSets         *bool                 `json:"ignoreDaemonSets,omitempty"`
	Force                    bool                  `json:"force,omitempty"`
	DisableEviction          bool                  `json:"disableEviction,omitempty"`
	SkipWaitForDeleteTimeout int                   `json:"skipWaitForDeleteTimeout,omitempty"`
	PodSelector              *metav1.LabelSelector `json:"podSelector,omitempty"`
}

type secretSpec struct {
	Name          string `json:"name"`
	Path          string `json:"path"`
	IgnoreUpdates bool   `json:"ignoreUpdates,omitempty"`
	DefaultMode   *int32 `json:"defaultMode,omitempty"`
}

type windowSpec struct {
	Days      []string `json:"days,omitempty"`
	StartTime string   `json:"startTime,omitempty"`
	EndTime   string   `json:"endTime,omitempty"`
	TimeZone  string   `json:"timeZone,omitempty"`
}

// vector is one case: a Plan as the API server stores it, the Secrets it mounts, the version
// resolved for it, and the hash (written by this program).
type vector struct {
	Name    string            `json:"name"`
	Plan    json.RawMessage   `json:"plan"`
	Secrets []json.RawMessage `json:"secrets,omitempty"`
	Version string            `json:"version"`
	Hash    string            `json:"hash"`
}

// planHash follows the Go controller's digest: SHA-224 over the resolved version, the service
// account, the value at each path of the digest annotation in the Plan converted to a map, and
// the kubectl hash of each Secret whose updates are not ignored.
func planHash(raw json.RawMessage, secrets []json.RawMessage, version string) (string, error) {
	var p plan
	if err := json.Unmarshal(raw, &p); err != nil {
		return "", err
	}
	// A typed informer's objects carry no type meta.
	p.TypeMeta = metav1.TypeMeta{}
	p.Status.LatestVersion = version
	h := sha256.New224()
	h.Write([]byte(p.Status.LatestVersion))
	h.Write([]byte(p.Spec.ServiceAccountName))
	if paths := p.Annotations["upgrade.cattle.io/digest"]; paths != "" {
		converted, err := data.Convert(&p)
		if err != nil {
			return "", err
		}
		for _, entry := range strings.Split(paths, ",") {
			h.Write([]byte(converted.String(strings.Split(entry, ".")...)))
		}
	}
	byName := map[string]*corev1.Secret{}
	for _, s := range secrets {
		var secret corev1.Secret
		if err := json.Unmarshal(s, &secret); err != nil {
			return "", err
		}
		byName[secret.Name] = &secret
	}
	for _, s := range p.Spec.Secrets {
		if s.IgnoreUpdates {
			continue
		}
		secret, ok := byName[s.Name]
		if !ok {
			return "", fmt.Errorf("secret %q is not in the vector", s.Name)
		}
		secretHash, err := hash.SecretHash(secret)
		if err != nil {
			return "", err
		}
		h.Write([]byte(secretHash))
	}
	return fmt.Sprintf("%x", h.Sum(nil)), nil
}

func main() {
	file := flag.String("file", "tests/vectors/plan-hash.json", "vectors to compute")
	write := flag.Bool("write", false, "write the computed hashes into the file")
	flag.Parse()
	text, err := os.ReadFile(*file)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(2)
	}
	var vectors []vector
	if err := json.Unmarshal(text, &vectors); err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(2)
	}
	differ := 0
	for i := range vectors {
		got, err := planHash(vectors[i].Plan, vectors[i].Secrets, vectors[i].Version)
		if err != nil {
			fmt.Fprintf(os.Stderr, "%s: %v\n", vectors[i].Name, err)
			os.Exit(2)
		}
		if got != vectors[i].Hash {
			differ++
			fmt.Printf("%s: file has %q, Go computes %q\n", vectors[i].Name, vectors[i].Hash, got)
			vectors[i].Hash = got
		}
	}
	if *write {
		var out bytes.Buffer
		encoder := json.NewEncoder(&out)
		encoder.SetIndent("", "  ")
		encoder.SetEscapeHTML(false)
		if err := encoder.Encode(vectors); err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(2)
		}
		if err := os.WriteFile(*file, out.Bytes(), 0o644); err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(2)
		}
		return
	}
	if differ > 0 {
		os.Exit(1)
	}
	fmt.Printf("%d vectors agree\n", len(vectors))
}
