# steps.sh: sourced by the CI scripts that run in named steps (docker/smoke.sh,
# .ci/fresh-machine.sh): say, begin and fail print as "NAME: ..." on stderr, with the seconds
# since the start and the step that failed; stop_group ends a process group. The sourcing
# script sets steps_name first.
t_start=$(date +%s)
step="starting"

say() { printf '%s: %s\n' "${steps_name:?}" "$*" >&2; }
begin() {
  step=$1
  say "[$(($(date +%s) - t_start))s] $step"
}
fail() {
  say "FAILED at step: $step"
  [ $# -gt 0 ] && say "$*"
  exit 1
}

# stop_group PID: the process group that PID leads (started with setsid) gets TERM, then KILL
# after 5 s; PID is reaped. Nothing happens when PID is empty or gone.
stop_group() {
  local pid=$1
  [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null || return 0
  kill -TERM -- "-$pid" 2>/dev/null
  for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
  kill -KILL -- "-$pid" 2>/dev/null
  wait "$pid" 2>/dev/null
  return 0
}
