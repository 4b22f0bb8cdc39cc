#!/usr/bin/env bash
# Packages the Helm chart for one published image, checked: the chart's default image and the
# alerts' runbook links (the repository OWNER/NAME) are set, then the packaged chart is rendered
# and must install exactly IMAGE:TAG and name no placeholder.
#   bash image/chart.sh HELM ghcr.io/OWNER/system-upgrade-controller 0.1.0 OWNER/NAME dist
set -euo pipefail
helm="$1"
image="$2"
tag="$3"
repository="$4"
out="$5"
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
cp -r "$repo/charts/system-upgrade-controller" "$work/"
chart="$work/system-upgrade-controller"
python3 - "$chart" "$image" "$repository" <<'PY'
import pathlib, sys
chart, image, repository = pathlib.Path(sys.argv[1]), sys.argv[2], sys.argv[3]
values = chart / "values.yaml"
text = values.read_text()
old = "  repository: system-upgrade-controller\n"
if text.count(old) != 1:
    sys.exit(f"{values}: expected one line {old.strip()!r} to set the image")
values.write_text(text.replace(old, f"  repository: {image}\n"))
rules = chart / "files" / "prometheusrule.yaml"
text = rules.read_text()
if "github.com/OWNER/system-upgrade-controller/" not in text:
    sys.exit(f"{rules}: no runbook link to set")
rules.write_text(text.replace("github.com/OWNER/system-upgrade-controller/", f"github.com/{repository}/"))
PY
mkdir -p "$out"
"$helm" package "$chart" --destination "$out" --app-version "$tag" --version "$tag" >&2
package="$out/system-upgrade-controller-$tag.tgz"
rendered="$("$helm" template system-upgrade-controller "$package" --namespace system-upgrade \
  --kube-version 1.36.0 --set monitoring.prometheusRule.enabled=true)"
images="$(grep -E '^\s+image: ' <<<"$rendered" | sed -E 's/^\s+image: "?([^"]*)"?$/\1/' | sort -u)"
[[ $images == "$image:$tag" ]] || { echo "the packaged chart installs '$images', not $image:$tag" >&2; exit 1; }
! grep -q "OWNER" <<<"$rendered" || { echo "the packaged chart still names OWNER" >&2; exit 1; }
echo "$package"
