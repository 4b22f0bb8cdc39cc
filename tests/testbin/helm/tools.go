//go:build tools

// Keeps helm's command in the module graph, so `go mod tidy` keeps its requirements.
package tools

import _ "helm.sh/helm/v3/cmd/helm"
