// The prometheus-operator CRDs (ServiceMonitor, PrometheusRule) the e2e suite installs to check
// deploy/monitoring/ and the chart's monitoring objects against their schemas. Only the module's
// example/prometheus-operator-crd/ YAML is used; nothing is built.
module suc-rs/testbin/monitoring

go 1.26.0

require github.com/prometheus-operator/prometheus-operator v0.85.0
