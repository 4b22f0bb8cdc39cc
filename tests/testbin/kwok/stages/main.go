// Command stages prints kwok's default node stages and the pod stages that make pods run and
// delete as one multi-document YAML stream, so the test cluster uses the stages shipped with the
// pinned kwok version. Pods of the upgrade controller (label upgrade.cattle.io/controller) are
// left to the project's own stages (tests/cluster/job-stages.yaml), which model their init
// containers and choose success or failure per pod; kwok's pod-ready stage is narrowed to
// exclude them.
package main

import (
	"fmt"
	"strings"

	"sigs.k8s.io/kwok/pkg/apis/v1alpha1"
	nodeheartbeat "sigs.k8s.io/kwok/kustomize/stage/node/heartbeat-with-lease"
	nodefast "sigs.k8s.io/kwok/kustomize/stage/node/fast"
	podfast "sigs.k8s.io/kwok/kustomize/stage/pod/fast"
	"sigs.k8s.io/yaml"
)

func main() {
	var ready v1alpha1.Stage
	if err := yaml.Unmarshal([]byte(podfast.DefaultPodReady), &ready); err != nil {
		panic(err)
	}
	ready.Spec.Selector.MatchExpressions = append(ready.Spec.Selector.MatchExpressions, v1alpha1.MatchExpression{
		Key:      `.metadata.labels["upgrade.cattle.io/controller"]`,
		Operator: v1alpha1.SelectorOpDoesNotExist,
	})
	narrowed, err := yaml.Marshal(ready)
	if err != nil {
		panic(err)
	}
	docs := []string{
		nodefast.DefaultNodeInit,
		nodeheartbeat.DefaultNodeHeartbeatWithLease,
		string(narrowed),
		podfast.DefaultPodDelete,
	}
	for i, d := range docs {
		if i > 0 {
			fmt.Println("---")
		}
		fmt.Println(strings.TrimSpace(d))
	}
}
