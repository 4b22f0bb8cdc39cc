-- Argo CD health check for upgrade.cattle.io/Plan (system-upgrade-controller in Rust).
-- Healthy: every selected node runs the latest version. Progressing: the controller has not yet
-- seen the latest spec, or the rollout is under way (or waits for its window or channel).
-- Suspended: spec.paused, the nodes left are labelled upgrade.cattle.io/pause=true, or the
-- rollout was cancelled (upgrade.cattle.io/cancel), or its first wave waits for approval.
-- Degraded: a node's Job or drain failed, or the Plan is invalid.
local hs = {}
local status = obj.status
if status == nil or status.observedGeneration == nil
    or status.observedGeneration < (obj.metadata.generation or 0) then
  hs.status = "Progressing"
  hs.message = "waiting for the controller to see this version of the Plan"
  return hs
end
local conditions = {}
for _, c in ipairs(status.conditions or {}) do
  conditions[c.type] = c
end
local complete = conditions["Complete"] or {}
local progress = status.progress or "?"
if conditions["Stalled"] ~= nil and conditions["Stalled"].status == "True" then
  local validated = conditions["Validated"] or {}
  hs.status = "Degraded"
  if validated.status == "False" then
    hs.message = validated.message
  else
    hs.message = complete.message
  end
  return hs
end
if complete.status == "True" then
  hs.status = "Healthy"
  hs.message = "upgraded " .. progress .. " nodes"
  return hs
end
if complete.reason == "Paused" or complete.reason == "Cancelled"
    or complete.reason == "AwaitingApproval" then
  hs.status = "Suspended"
  hs.message = complete.message
  return hs
end
hs.status = "Progressing"
hs.message = (complete.reason or "SyncJob") .. ": " .. progress .. " nodes upgraded"
return hs
