// Command kubelet-versions plays the part of K3s and RKE2 on the test bed's simulated nodes, as
// far as versions go: when an upgrade pod of a k3s-upgrade or rke2-upgrade image succeeds on a
// kwok node, the node reports the image's tag as status.nodeInfo.kubeletVersion, as a real
// node does once K3s restarts on the new version. A pod labelled suc-test/no-converge=true (a
// Plan's labels are copied to its pods) leaves the version as it was: an upgrade that
// "succeeds" without changing anything. Test tooling only; not part of the product.
package main

import (
	"context"
	"flag"
	"fmt"
	"log"
	"os"
	"os/signal"
	"strings"
	"sync"
	"syscall"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/cache"
	"k8s.io/client-go/tools/clientcmd"
)

// brings is the version a succeeded upgrade pod brings its node to, or "" when the pod is not
// a K3s or RKE2 upgrade: rancher/k3s-upgrade:v1.30.5-k3s1 gives v1.30.5+k3s1.
func brings(pod *corev1.Pod) string {
	for _, c := range pod.Spec.Containers {
		if c.Name != "upgrade" {
			continue
		}
		at := strings.LastIndex(c.Image, ":")
		if at < 0 || strings.Contains(c.Image[at:], "/") {
			return ""
		}
		repository, tag := c.Image[:at], c.Image[at+1:]
		name := repository[strings.LastIndex(repository, "/")+1:]
		if name != "k3s-upgrade" && name != "rke2-upgrade" {
			return ""
		}
		if dash := strings.LastIndex(tag, "-"); dash >= 0 {
			distro := tag[dash+1:]
			if strings.HasPrefix(distro, "k3s") || strings.HasPrefix(distro, "rke2") {
				return tag[:dash] + "+" + distro
			}
		}
		// Another version (a test channel's v1.2.3-test) is reported as it is.
		if len(tag) > 1 && tag[0] == 'v' && tag[1] >= '0' && tag[1] <= '9' {
			return tag
		}
		return ""
	}
	return ""
}

func main() {
	kubeconfig := flag.String("kubeconfig", "", "kubeconfig of the test bed")
	flag.Parse()
	config, err := clientcmd.BuildConfigFromFlags("", *kubeconfig)
	if err != nil {
		log.Fatalf("kubeconfig: %v", err)
	}
	client := kubernetes.NewForConfigOrDie(config)
	ctx, cancel := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer cancel()

	var mu sync.Mutex
	done := map[types.UID]bool{}
	handle := func(obj interface{}) {
		pod, ok := obj.(*corev1.Pod)
		if !ok || pod.Status.Phase != corev1.PodSucceeded || pod.Spec.NodeName == "" {
			return
		}
		mu.Lock()
		seen := done[pod.UID]
		mu.Unlock()
		if seen || pod.Labels["suc-test/no-converge"] == "true" {
			return
		}
		version := brings(pod)
		finish := func() {
			mu.Lock()
			done[pod.UID] = true
			mu.Unlock()
		}
		if version == "" {
			finish()
			return
		}
		node, err := client.CoreV1().Nodes().Get(ctx, pod.Spec.NodeName, metav1.GetOptions{})
		if err != nil {
			return // looked at again at the next resync
		}
		if node.Annotations["kwok.x-k8s.io/node"] == "" {
			finish() // a real node reports its own version
			return
		}
		patch := fmt.Sprintf(`{"status":{"nodeInfo":{"kubeletVersion":%q}}}`, version)
		_, err = client.CoreV1().Nodes().Patch(ctx, node.Name, types.MergePatchType, []byte(patch),
			metav1.PatchOptions{}, "status")
		if err != nil {
			return
		}
		finish()
		log.Printf("node %s runs %s (pod %s/%s succeeded)", node.Name, version, pod.Namespace, pod.Name)
	}
	// Resynced every 10 s, so a patch that failed (the API server restarting) is tried again.
	factory := informers.NewSharedInformerFactoryWithOptions(client, 10*time.Second,
		informers.WithTweakListOptions(func(o *metav1.ListOptions) {
			o.LabelSelector = "upgrade.cattle.io/plan"
		}))
	informer := factory.Core().V1().Pods().Informer()
	if _, err := informer.AddEventHandler(cache.ResourceEventHandlerFuncs{
		AddFunc:    handle,
		UpdateFunc: func(_, obj interface{}) { handle(obj) },
	}); err != nil {
		log.Fatalf("handler: %v", err)
	}
	factory.Start(ctx.Done())
	<-ctx.Done()
}
