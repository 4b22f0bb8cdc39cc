#!/usr/bin/env bash
# Writes the release manifests for one image into OUT:
#   crd.yaml                        the Plan CRD alone
#   system-upgrade-controller.yaml  everything in deploy/ (CRD included), with the image set
#   bash image/manifests.sh ghcr.io/OWNER/system-upgrade-controller 0.1.0 dist
set -euo pipefail
image="$1"
tag="$2"
out="$3"
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
mkdir -p "$out"
overlay="$(mktemp -d)"
trap 'rm -rf "$overlay"' EXIT
cp -r "$repo/deploy" "$overlay/base"
cat >"$overlay/kustomization.yaml" <<YAML
resources:
- base
images:
- name: system-upgrade-controller
  newName: $image
  newTag: "$tag"
YAML
{
  echo "# system-upgrade-controller $tag: kubectl apply -f system-upgrade-controller.yaml"
  echo "# Deleting it deletes the Plan CRD and with it every Plan."
  kubectl kustomize "$overlay"
} >"$out/system-upgrade-controller.yaml.tmp"
mv "$out/system-upgrade-controller.yaml.tmp" "$out/system-upgrade-controller.yaml"
cp "$repo/deploy/crd.yaml" "$out/crd.yaml"
echo "$out/crd.yaml"
echo "$out/system-upgrade-controller.yaml"
