# Sourced by test.sh and demo.sh. CRIU cannot dump a process whose session
# leader is outside its pid namespace (the session id reads as 0 there, as
# it does for jobs some CI runners start). In that case the calling script
# re-runs itself in a session of its own, where the leader is visible.
# Usage: own_session SCRIPT "$@" (SCRIPT relative to the repository root, the cwd)
own_session() {
    local sid
    sid=$(sed 's/.*) //' "/proc/$$/stat" | cut -d' ' -f4)
    if [ "$sid" = 0 ] && [ -z "${SELFDUMP_OWN_SESSION:-}" ]; then
        echo "$(basename "$1"): this session's leader is outside the pid namespace and CRIU cannot dump processes in such a session; running in a new session (setsid)" >&2
        SELFDUMP_OWN_SESSION=1 exec setsid --wait bash "$@"
    fi
}
