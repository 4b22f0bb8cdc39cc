//go:build tools

// Keeps promtool's command in the module graph, so `go mod tidy` keeps its requirements.
package tools

import _ "github.com/prometheus/prometheus/cmd/promtool"
