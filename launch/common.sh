# Shared by the launch scripts: `run CMD...` prints the command (shell-quoted, ready to paste) and
# executes it unless --dry-run was given.
DRY_RUN=0
quote() {
  if [[ "$1" =~ ^[A-Za-z0-9_./:=,@%+-]+$ ]]; then printf '%s' "$1"; else printf "'%s'" "${1//\'/\'\\\'\'}"; fi
}
run() {
  local out="+" arg
  for arg in "$@"; do out+=" $(quote "$arg")"; done
  echo "$out"
  if [ "$DRY_RUN" -eq 0 ]; then "$@"; fi
}
die() { echo "error: $*" >&2; exit 2; }
