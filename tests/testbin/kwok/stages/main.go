// Command stages prints kwok's default node stages and the pod stages that make pods run and
// delete as one multi-document YAML stream, so the test cluster uses the stages shipped with the
// pinned kwok version. Completing Job pods is left to the project's own stages, which choose
// success or failure per pod.
package main

import (
	"fmt"
	"strings"

	nodeheartbeat "sigs.k8s.io/kwok/kustomize/stage/node/heartbeat-with-lease"
	nodefast "sigs.k8s.io/kwok/kustomize/stage/node/fast"
	podfast "sigs.k8s.io/kwok/kustomize/stage/pod/fast"
)

func main() {
	docs := []string{
		nodefast.DefaultNodeInit,
		nodeheartbeat.DefaultNodeHeartbeatWithLease,
		podfast.DefaultPodReady,
		podfast.DefaultPodDelete,
	}
	for i, d := range docs {
		if i > 0 {
			fmt.Println("---")
		}
		fmt.Println(strings.TrimSpace(d))
	}
}
