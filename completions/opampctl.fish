# Print an optspec for argparse to handle cmd's options that are independent of any subcommand.
function __fish_opampctl_global_optspecs
    string join \n server= token= token-file= context= o/output= q/quiet no-color ca-file= request-timeout= h/help V/version
end

function __fish_opampctl_needs_command
    # Figure out if the current invocation already has a command.
    set -l cmd (commandline -opc)
    set -e cmd[1]
    argparse -s (__fish_opampctl_global_optspecs) -- $cmd 2>/dev/null
    or return
    if set -q argv[1]
        # Also print the command, so this can be used to figure out what it is.
        echo $argv[1]
        return 1
    end
    return 0
end

function __fish_opampctl_using_subcommand
    set -l cmd (__fish_opampctl_needs_command)
    test -z "$cmd"
    and return 1
    contains -- $cmd[1] $argv
end

complete -c opampctl -n "__fish_opampctl_needs_command" -l server -d 'Base URL of opampd [default: http://127.0.0.1:8080]' -r
complete -c opampctl -n "__fish_opampctl_needs_command" -l token -d 'API token (an admin or operator token, or a login JWT)' -r
complete -c opampctl -n "__fish_opampctl_needs_command" -l token-file -d 'File holding the API token [default: ./data/admin.token, then /var/lib/opampd/admin.token, for a server on this host]' -r -F
complete -c opampctl -n "__fish_opampctl_needs_command" -l context -d 'Context of the config file to use (server and token file)' -r
complete -c opampctl -n "__fish_opampctl_needs_command" -s o -l output -d 'Output format' -r -f -a "table\t'Aligned columns for people'
wide\t'Like table, with more columns'
json\t'JSON: stable field names, for scripts'
yaml\t'YAML, same fields as JSON'"
complete -c opampctl -n "__fish_opampctl_needs_command" -l ca-file -d 'PEM file of a CA to trust for an https server (besides the built-in roots)' -r -F
complete -c opampctl -n "__fish_opampctl_needs_command" -l request-timeout -d 'Timeout of one request to the server, e.g. 10s' -r
complete -c opampctl -n "__fish_opampctl_needs_command" -s q -l quiet -d 'Print nothing on success: the exit code is the answer (errors still go to stderr)'
complete -c opampctl -n "__fish_opampctl_needs_command" -l no-color -d 'No colour (also with NO_COLOR set or TERM=dumb)'
complete -c opampctl -n "__fish_opampctl_needs_command" -s h -l help -d 'Print help (see more with \'--help\')'
complete -c opampctl -n "__fish_opampctl_needs_command" -s V -l version -d 'Print version'
complete -c opampctl -n "__fish_opampctl_needs_command" -f -a "health" -d 'Check /health, /health/ready and /health/live; exit 1 unless healthy'
complete -c opampctl -n "__fish_opampctl_needs_command" -f -a "agents" -d 'Inspect and manage agents'
complete -c opampctl -n "__fish_opampctl_needs_command" -f -a "configs" -d 'Manage versioned configurations'
complete -c opampctl -n "__fish_opampctl_needs_command" -f -a "rollout" -d 'Roll a configuration version out to its agents, in batches'
complete -c opampctl -n "__fish_opampctl_needs_command" -f -a "packages" -d 'Manage the package catalogue: agent releases and addons, per platform'
complete -c opampctl -n "__fish_opampctl_needs_command" -f -a "backup" -d 'Write a consistent, compressed, checksummed backup of the database'
complete -c opampctl -n "__fish_opampctl_needs_command" -f -a "restore" -d 'Restore the database from a backup (checked before anything is touched)'
complete -c opampctl -n "__fish_opampctl_needs_command" -f -a "logs" -d 'Show opampd\'s log, from the API or the supervisor\'s log'
complete -c opampctl -n "__fish_opampctl_needs_command" -f -a "restart" -d 'Restart opampd through its supervisor, then wait for ready and agents'
complete -c opampctl -n "__fish_opampctl_needs_command" -f -a "doctor" -d 'Run every diagnostic check, each with a verdict and a remedy'
complete -c opampctl -n "__fish_opampctl_needs_command" -f -a "troubleshoot" -d 'Focused diagnostics for one runbook problem'
complete -c opampctl -n "__fish_opampctl_needs_command" -f -a "db" -d 'Database statistics and maintenance'
complete -c opampctl -n "__fish_opampctl_needs_command" -f -a "audit" -d 'Review the audit log: logins, configuration changes, agents, users, tokens'
complete -c opampctl -n "__fish_opampctl_needs_command" -f -a "users" -d 'Manage user accounts and their roles (admin)'
complete -c opampctl -n "__fish_opampctl_needs_command" -f -a "tokens" -d 'Manage API tokens: your own, or everybody\'s as admin'
complete -c opampctl -n "__fish_opampctl_needs_command" -f -a "login" -d 'Log in with a user name and password and keep the session token in a context'
complete -c opampctl -n "__fish_opampctl_needs_command" -f -a "logout" -d 'End the session opampctl login stored for the context, and forget its token'
complete -c opampctl -n "__fish_opampctl_needs_command" -f -a "alerts" -d 'Prometheus alerting rules for opampd'
complete -c opampctl -n "__fish_opampctl_needs_command" -f -a "bench" -d 'Simulate agents against a running opampd and measure it, for sizing'
complete -c opampctl -n "__fish_opampctl_needs_command" -f -a "completions" -d 'Print a shell completion script'
complete -c opampctl -n "__fish_opampctl_needs_command" -f -a "man" -d 'Print the man page, or write all man pages to a directory'
complete -c opampctl -n "__fish_opampctl_needs_command" -f -a "__complete" -d 'Agent uids or configuration names from the server, one per line, for the completion scripts; prints nothing when the server cannot be asked'
complete -c opampctl -n "__fish_opampctl_using_subcommand health" -l timeout -d 'How long --wait waits' -r
complete -c opampctl -n "__fish_opampctl_using_subcommand health" -l server -d 'Base URL of opampd [default: http://127.0.0.1:8080]' -r
complete -c opampctl -n "__fish_opampctl_using_subcommand health" -l token -d 'API token (an admin or operator token, or a login JWT)' -r
complete -c opampctl -n "__fish_opampctl_using_subcommand health" -l token-file -d 'File holding the API token [default: ./data/admin.token, then /var/lib/opampd/admin.token, for a server on this host]' -r -F
complete -c opampctl -n "__fish_opampctl_using_subcommand health" -l context -d 'Context of the config file to use (server and token file)' -r
complete -c opampctl -n "__fish_opampctl_using_subcommand health" -s o -l output -d 'Output format' -r -f -a "table\t'Aligned columns for people'
wide\t'Like table, with more columns'
json\t'JSON: stable field names, for scripts'
yaml\t'YAML, same fields as JSON'"
complete -c opampctl -n "__fish_opampctl_using_subcommand health" -l ca-file -d 'PEM file of a CA to trust for an https server (besides the built-in roots)' -r -F
complete -c opampctl -n "__fish_opampctl_using_subcommand health" -l request-timeout -d 'Timeout of one request to the server, e.g. 10s' -r
complete -c opampctl -n "__fish_opampctl_using_subcommand health" -l wait -d 'Poll /health/ready until it answers 200 (or --timeout passes)'
complete -c opampctl -n "__fish_opampctl_using_subcommand health" -s q -l quiet -d 'Print nothing on success: the exit code is the answer (errors still go to stderr)'
complete -c opampctl -n "__fish_opampctl_using_subcommand health" -l no-color -d 'No colour (also with NO_COLOR set or TERM=dumb)'
complete -c opampctl -n "__fish_opampctl_using_subcommand health" -s h -l help -d 'Print help (see more with \'--help\')'
complete -c opampctl -n "__fish_opampctl_using_subcommand agents; and not __fish_seen_subcommand_from list show label delete restart components" -l server -d 'Base URL of opampd [default: http://127.0.0.1:8080]' -r
complete -c opampctl -n "__fish_opampctl_using_subcommand agents; and not __fish_seen_subcommand_from list show label delete restart components" -l token -d 'API token (an admin or operator token, or a login JWT)' -r
complete -c opampctl -n "__fish_opampctl_using_subcommand agents; and not __fish_seen_subcommand_from list show label delete restart components" -l token-file -d 'File holding the API token [default: ./data/admin.token, then /var/lib/opampd/admin.token, for a server on this host]' -r -F
complete -c opampctl -n "__fish_opampctl_using_subcommand agents; and not __fish_seen_subcommand_from list show label delete restart components" -l context -d 'Context of the config file to use (server and token file)' -r
complete -c opampctl -n "__fish_opampctl_using_subcommand agents; and not __fish_seen_subcommand_from list show label delete restart components" -s o -l output -d 'Output format' -r -f -a "table\t'Aligned columns for people'
wide\t'Like table, with more columns'
json\t'JSON: stable field names, for scripts'
yaml\t'YAML, same fields as JSON'"
complete -c opampctl -n "__fish_opampctl_using_subcommand agents; and not __fish_seen_subcommand_from list show label delete restart components" -l ca-file -d 'PEM file of a CA to trust for an https server (besides the built-in roots)' -r -F
complete -c opampctl -n "__fish_opampctl_using_subcommand agents; and not __fish_seen_subcommand_from list show label delete restart components" -l request-timeout -d 'Timeout of one request to the server, e.g. 10s' -r
complete -c opampctl -n "__fish_opampctl_using_subcommand agents; and not __fish_seen_subcommand_from list show label delete restart components" -s q -l quiet -d 'Print nothing on success: the exit code is the answer (errors still go to stderr)'
complete -c opampctl -n "__fish_opampctl_using_subcommand agents; and not __fish_seen_subcommand_from list show label delete restart components" -l no-color -d 'No colour (also with NO_COLOR set or TERM=dumb)'
complete -c opampctl -n "__fish_opampctl_using_subcommand agents; and not __fish_seen_subcommand_from list show label delete restart components" -s h -l help -d 'Print help (see more with \'--help\')'
complete -c opampctl -n "__fish_opampctl_using_subcommand agents; and not __fish_seen_subcommand_from list show label delete restart components" -f -a "list" -d 'List agents'
complete -c opampctl -n "__fish_opampctl_using_subcommand agents; and not __fish_seen_subcommand_from list show label delete restart components" -f -a "show" -d 'Show one agent'
complete -c opampctl -n "__fish_opampctl_using_subcommand agents; and not __fish_seen_subcommand_from list show label delete restart components" -f -a "label" -d 'Set or remove server-side labels of one agent, or of every agent -l/--status picks'
complete -c opampctl -n "__fish_opampctl_using_subcommand agents; and not __fish_seen_subcommand_from list show label delete restart components" -f -a "delete" -d 'Delete one agent from the inventory, or every agent -l/--status picks'
complete -c opampctl -n "__fish_opampctl_using_subcommand agents; and not __fish_seen_subcommand_from list show label delete restart components" -f -a "restart" -d 'Ask a connected agent, or every agent -l/--status picks, to restart'
complete -c opampctl -n "__fish_opampctl_using_subcommand agents; and not __fish_seen_subcommand_from list show label delete restart components" -f -a "components" -d 'List the components an agent can run, as it reported them (kind, type/name, version)'
complete -c opampctl -n "__fish_opampctl_using_subcommand agents; and __fish_seen_subcommand_from list" -s l -l selector -d 'Label selector: k=v, k!=v, k (present); comma means and; component=KIND/TYPE needs an available component' -r
complete -c opampctl -n "__fish_opampctl_using_subcommand agents; and __fish_seen_subcommand_from list" -l status -d 'Only agents with this status' -r -f -a "connected\t''
stale\t''
disconnected\t''"
complete -c opampctl -n "__fish_opampctl_using_subcommand agents; and __fish_seen_subcommand_from list" -l limit -d 'Page size (1-1000)' -r
complete -c opampctl -n "__fish_opampctl_using_subcommand agents; and __fish_seen_subcommand_from list" -l server -d 'Base URL of opampd [default: http://127.0.0.1:8080]' -r
complete -c opampctl -n "__fish_opampctl_using_subcommand agents; and __fish_seen_subcommand_from list" -l token -d 'API token (an admin or operator token, or a login JWT)' -r
complete -c opampctl -n "__fish_opampctl_using_subcommand agents; and __fish_seen_subcommand_from list" -l token-file -d 'File holding the API token [default: ./data/admin.token, then /var/lib/opampd/admin.token, for a server on this host]' -r -F
complete -c opampctl -n "__fish_opampctl_using_subcommand agents; and __fish_seen_subcommand_from list" -l context -d 'Context of the config file to use (server and token file)' -r
complete -c opampctl -n "__fish_opampctl_using_subcommand agents; and __fish_seen_subcommand_from list" -s o -l output -d 'Output format' -r -f -a "table\t'Aligned columns for people'
wide\t'Like table, with more columns'
json\t'JSON: stable field names, for scripts'
yaml\t'YAML, same fields as JSON'"
complete -c opampctl -n "__fish_opampctl_using_subcommand agents; and __fish_seen_subcommand_from list" -l ca-file -d 'PEM file of a CA to trust for an https server (besides the built-in roots)' -r -F
complete -c opampctl -n "__fish_opampctl_using_subcommand agents; and __fish_seen_subcommand_from list" -l request-timeout -d 'Timeout of one request to the server, e.g. 10s' -r
complete -c opampctl -n "__fish_opampctl_using_subcommand agents; and __fish_seen_subcommand_from list" -l all -d 'Follow the pages to the end instead of stopping after the first'
complete -c opampctl -n "__fish_opampctl_using_subcommand agents; and __fish_seen_subcommand_from list" -s q -l quiet -d 'Print nothing on success: the exit code is the answer (errors still go to stderr)'
complete -c opampctl -n "__fish_opampctl_using_subcommand agents; and __fish_seen_subcommand_from list" -l no-color -d 'No colour (also with NO_COLOR set or TERM=dumb)'
complete -c opampctl -n "__fish_opampctl_using_subcommand agents; and __fish_seen_subcommand_from list" -s h -l help -d 'Print help (see more with \'--help\')'
complete -c opampctl -n "__fish_opampctl_using_subcommand agents; and __fish_seen_subcommand_from show" -l server -d 'Base URL of opampd [default: http://127.0.0.1:8080]' -r
complete -c opampctl -n "__fish_opampctl_using_subcommand agents; and __fish_seen_subcommand_from show" -l token -d 'API token (an admin or operator token, or a login JWT)' -r
complete -c opampctl -n "__fish_opampctl_using_subcommand agents; and __fish_seen_subcommand_from show" -l token-file -d 'File holding the API token [default: ./data/admin.token, then /var/lib/opampd/admin.token, for a server on this host]' -r -F
complete -c opampctl -n "__fish_opampctl_using_subcommand agents; and __fish_seen_subcommand_from show" -l context -d 'Context of the config file to use (server and token file)' -r
complete -c opampctl -n "__fish_opampctl_using_subcommand agents; and __fish_seen_subcommand_from show" -s o -l output -d 'Output format' -r -f -a "table\t'Aligned columns for people'
wide\t'Like table, with more columns'
json\t'JSON: stable field names, for scripts'
yaml\t'YAML, same fields as JSON'"
complete -c opampctl -n "__fish_opampctl_using_subcommand agents; and __fish_seen_subcommand_from show" -l ca-file -d 'PEM file of a CA to trust for an https server (besides the built-in roots)' -r -F
complete -c opampctl -n "__fish_opampctl_using_subcommand agents; and __fish_seen_subcommand_from show" -l request-timeout -d 'Timeout of one request to the server, e.g. 10s' -r
complete -c opampctl -n "__fish_opampctl_using_subcommand agents; and __fish_seen_subcommand_from show" -s q -l quiet -d 'Print nothing on success: the exit code is the answer (errors still go to stderr)'
complete -c opampctl -n "__fish_opampctl_using_subcommand agents; and __fish_seen_subcommand_from show" -l no-color -d 'No colour (also with NO_COLOR set or TERM=dumb)'
complete -c opampctl -n "__fish_opampctl_using_subcommand agents; and __fish_seen_subcommand_from show" -s h -l help -d 'Print help (see more with \'--help\')'
complete -c opampctl -n "__fish_opampctl_using_subcommand agents; and __fish_seen_subcommand_from label" -s l -l selector -d 'Act on every agent this label selector matches (k=v, k!=v, k; comma means and), instead of one UID' -r
complete -c opampctl -n "__fish_opampctl_using_subcommand agents; and __fish_seen_subcommand_from label" -l status -d 'Act on every agent with this status (with -l: agents that match both)' -r -f -a "connected\t''
stale\t''
disconnected\t''"
complete -c opampctl -n "__fish_opampctl_using_subcommand agents; and __fish_seen_subcommand_from label" -l server -d 'Base URL of opampd [default: http://127.0.0.1:8080]' -r
complete -c opampctl -n "__fish_opampctl_using_subcommand agents; and __fish_seen_subcommand_from label" -l token -d 'API token (an admin or operator token, or a login JWT)' -r
complete -c opampctl -n "__fish_opampctl_using_subcommand agents; and __fish_seen_subcommand_from label" -l token-file -d 'File holding the API token [default: ./data/admin.token, then /var/lib/opampd/admin.token, for a server on this host]' -r -F
complete -c opampctl -n "__fish_opampctl_using_subcommand agents; and __fish_seen_subcommand_from label" -l context -d 'Context of the config file to use (server and token file)' -r
complete -c opampctl -n "__fish_opampctl_using_subcommand agents; and __fish_seen_subcommand_from label" -s o -l output -d 'Output format' -r -f -a "table\t'Aligned columns for people'
wide\t'Like table, with more columns'
json\t'JSON: stable field names, for scripts'
yaml\t'YAML, same fields as JSON'"
complete -c opampctl -n "__fish_opampctl_using_subcommand agents; and __fish_seen_subcommand_from label" -l ca-file -d 'PEM file of a CA to trust for an https server (besides the built-in roots)' -r -F
complete -c opampctl -n "__fish_opampctl_using_subcommand agents; and __fish_seen_subcommand_from label" -l request-timeout -d 'Timeout of one request to the server, e.g. 10s' -r
complete -c opampctl -n "__fish_opampctl_using_subcommand agents; and __fish_seen_subcommand_from label" -s y -l yes -d 'Do not ask before acting on the agents -l/--status picks (needed when standard input is not a terminal)'
complete -c opampctl -n "__fish_opampctl_using_subcommand agents; and __fish_seen_subcommand_from label" -s q -l quiet -d 'Print nothing on success: the exit code is the answer (errors still go to stderr)'
complete -c opampctl -n "__fish_opampctl_using_subcommand agents; and __fish_seen_subcommand_from label" -l no-color -d 'No colour (also with NO_COLOR set or TERM=dumb)'
complete -c opampctl -n "__fish_opampctl_using_subcommand agents; and __fish_seen_subcommand_from label" -s h -l help -d 'Print help (see more with \'--help\')'
complete -c opampctl -n "__fish_opampctl_using_subcommand agents; and __fish_seen_subcommand_from delete" -s l -l selector -d 'Act on every agent this label selector matches (k=v, k!=v, k; comma means and), instead of one UID' -r
complete -c opampctl -n "__fish_opampctl_using_subcommand agents; and __fish_seen_subcommand_from delete" -l status -d 'Act on every agent with this status (with -l: agents that match both)' -r -f -a "connected\t''
stale\t''
disconnected\t''"
complete -c opampctl -n "__fish_opampctl_using_subcommand agents; and __fish_seen_subcommand_from delete" -l server -d 'Base URL of opampd [default: http://127.0.0.1:8080]' -r
complete -c opampctl -n "__fish_opampctl_using_subcommand agents; and __fish_seen_subcommand_from delete" -l token -d 'API token (an admin or operator token, or a login JWT)' -r
complete -c opampctl -n "__fish_opampctl_using_subcommand agents; and __fish_seen_subcommand_from delete" -l token-file -d 'File holding the API token [default: ./data/admin.token, then /var/lib/opampd/admin.token, for a server on this host]' -r -F
complete -c opampctl -n "__fish_opampctl_using_subcommand agents; and __fish_seen_subcommand_from delete" -l context -d 'Context of the config file to use (server and token file)' -r
complete -c opampctl -n "__fish_opampctl_using_subcommand agents; and __fish_seen_subcommand_from delete" -s o -l output -d 'Output format' -r -f -a "table\t'Aligned columns for people'
wide\t'Like table, with more columns'
json\t'JSON: stable field names, for scripts'
yaml\t'YAML, same fields as JSON'"
complete -c opampctl -n "__fish_opampctl_using_subcommand agents; and __fish_seen_subcommand_from delete" -l ca-file -d 'PEM file of a CA to trust for an https server (besides the built-in roots)' -r -F
complete -c opampctl -n "__fish_opampctl_using_subcommand agents; and __fish_seen_subcommand_from delete" -l request-timeout -d 'Timeout of one request to the server, e.g. 10s' -r
complete -c opampctl -n "__fish_opampctl_using_subcommand agents; and __fish_seen_subcommand_from delete" -l force -d 'Delete even if the agent is connected (it comes back at its next message)'
complete -c opampctl -n "__fish_opampctl_using_subcommand agents; and __fish_seen_subcommand_from delete" -s y -l yes -d 'Do not ask before acting on the agents -l/--status picks (needed when standard input is not a terminal)'
complete -c opampctl -n "__fish_opampctl_using_subcommand agents; and __fish_seen_subcommand_from delete" -s q -l quiet -d 'Print nothing on success: the exit code is the answer (errors still go to stderr)'
complete -c opampctl -n "__fish_opampctl_using_subcommand agents; and __fish_seen_subcommand_from delete" -l no-color -d 'No colour (also with NO_COLOR set or TERM=dumb)'
complete -c opampctl -n "__fish_opampctl_using_subcommand agents; and __fish_seen_subcommand_from delete" -s h -l help -d 'Print help (see more with \'--help\')'
complete -c opampctl -n "__fish_opampctl_using_subcommand agents; and __fish_seen_subcommand_from restart" -s l -l selector -d 'Act on every agent this label selector matches (k=v, k!=v, k; comma means and), instead of one UID' -r
complete -c opampctl -n "__fish_opampctl_using_subcommand agents; and __fish_seen_subcommand_from restart" -l status -d 'Act on every agent with this status (with -l: agents that match both)' -r -f -a "connected\t''
stale\t''
disconnected\t''"
complete -c opampctl -n "__fish_opampctl_using_subcommand agents; and __fish_seen_subcommand_from restart" -l server -d 'Base URL of opampd [default: http://127.0.0.1:8080]' -r
complete -c opampctl -n "__fish_opampctl_using_subcommand agents; and __fish_seen_subcommand_from restart" -l token -d 'API token (an admin or operator token, or a login JWT)' -r
complete -c opampctl -n "__fish_opampctl_using_subcommand agents; and __fish_seen_subcommand_from restart" -l token-file -d 'File holding the API token [default: ./data/admin.token, then /var/lib/opampd/admin.token, for a server on this host]' -r -F
complete -c opampctl -n "__fish_opampctl_using_subcommand agents; and __fish_seen_subcommand_from restart" -l context -d 'Context of the config file to use (server and token file)' -r
complete -c opampctl -n "__fish_opampctl_using_subcommand agents; and __fish_seen_subcommand_from restart" -s o -l output -d 'Output format' -r -f -a "table\t'Aligned columns for people'
wide\t'Like table, with more columns'
json\t'JSON: stable field names, for scripts'
yaml\t'YAML, same fields as JSON'"
complete -c opampctl -n "__fish_opampctl_using_subcommand agents; and __fish_seen_subcommand_from restart" -l ca-file -d 'PEM file of a CA to trust for an https server (besides the built-in roots)' -r -F
complete -c opampctl -n "__fish_opampctl_using_subcommand agents; and __fish_seen_subcommand_from restart" -l request-timeout -d 'Timeout of one request to the server, e.g. 10s' -r
complete -c opampctl -n "__fish_opampctl_using_subcommand agents; and __fish_seen_subcommand_from restart" -s y -l yes -d 'Do not ask before acting on the agents -l/--status picks (needed when standard input is not a terminal)'
complete -c opampctl -n "__fish_opampctl_using_subcommand agents; and __fish_seen_subcommand_from restart" -s q -l quiet -d 'Print nothing on success: the exit code is the answer (errors still go to stderr)'
complete -c opampctl -n "__fish_opampctl_using_subcommand agents; and __fish_seen_subcommand_from restart" -l no-color -d 'No colour (also with NO_COLOR set or TERM=dumb)'
complete -c opampctl -n "__fish_opampctl_using_subcommand agents; and __fish_seen_subcommand_from restart" -s h -l help -d 'Print help (see more with \'--help\')'
complete -c opampctl -n "__fish_opampctl_using_subcommand agents; and __fish_seen_subcommand_from components" -l server -d 'Base URL of opampd [default: http://127.0.0.1:8080]' -r
complete -c opampctl -n "__fish_opampctl_using_subcommand agents; and __fish_seen_subcommand_from components" -l token -d 'API token (an admin or operator token, or a login JWT)' -r
complete -c opampctl -n "__fish_opampctl_using_subcommand agents; and __fish_seen_subcommand_from components" -l token-file -d 'File holding the API token [default: ./data/admin.token, then /var/lib/opampd/admin.token, for a server on this host]' -r -F
complete -c opampctl -n "__fish_opampctl_using_subcommand agents; and __fish_seen_subcommand_from components" -l context -d 'Context of the config file to use (server and token file)' -r
complete -c opampctl -n "__fish_opampctl_using_subcommand agents; and __fish_seen_subcommand_from components" -s o -l output -d 'Output format' -r -f -a "table\t'Aligned columns for people'
wide\t'Like table, with more columns'
json\t'JSON: stable field names, for scripts'
yaml\t'YAML, same fields as JSON'"
complete -c opampctl -n "__fish_opampctl_using_subcommand agents; and __fish_seen_subcommand_from components" -l ca-file -d 'PEM file of a CA to trust for an https server (besides the built-in roots)' -r -F
complete -c opampctl -n "__fish_opampctl_using_subcommand agents; and __fish_seen_subcommand_from components" -l request-timeout -d 'Timeout of one request to the server, e.g. 10s' -r
complete -c opampctl -n "__fish_opampctl_using_subcommand agents; and __fish_seen_subcommand_from components" -s q -l quiet -d 'Print nothing on success: the exit code is the answer (errors still go to stderr)'
complete -c opampctl -n "__fish_opampctl_using_subcommand agents; and __fish_seen_subcommand_from components" -l no-color -d 'No colour (also with NO_COLOR set or TERM=dumb)'
complete -c opampctl -n "__fish_opampctl_using_subcommand agents; and __fish_seen_subcommand_from components" -s h -l help -d 'Print help (see more with \'--help\')'
complete -c opampctl -n "__fish_opampctl_using_subcommand configs; and not __fish_seen_subcommand_from apply list show history diff rollback delete" -l server -d 'Base URL of opampd [default: http://127.0.0.1:8080]' -r
complete -c opampctl -n "__fish_opampctl_using_subcommand configs; and not __fish_seen_subcommand_from apply list show history diff rollback delete" -l token -d 'API token (an admin or operator token, or a login JWT)' -r
complete -c opampctl -n "__fish_opampctl_using_subcommand configs; and not __fish_seen_subcommand_from apply list show history diff rollback delete" -l token-file -d 'File holding the API token [default: ./data/admin.token, then /var/lib/opampd/admin.token, for a server on this host]' -r -F
complete -c opampctl -n "__fish_opampctl_using_subcommand configs; and not __fish_seen_subcommand_from apply list show history diff rollback delete" -l context -d 'Context of the config file to use (server and token file)' -r
complete -c opampctl -n "__fish_opampctl_using_subcommand configs; and not __fish_seen_subcommand_from apply list show history diff rollback delete" -s o -l output -d 'Output format' -r -f -a "table\t'Aligned columns for people'
wide\t'Like table, with more columns'
json\t'JSON: stable field names, for scripts'
yaml\t'YAML, same fields as JSON'"
complete -c opampctl -n "__fish_opampctl_using_subcommand configs; and not __fish_seen_subcommand_from apply list show history diff rollback delete" -l ca-file -d 'PEM file of a CA to trust for an https server (besides the built-in roots)' -r -F
complete -c opampctl -n "__fish_opampctl_using_subcommand configs; and not __fish_seen_subcommand_from apply list show history diff rollback delete" -l request-timeout -d 'Timeout of one request to the server, e.g. 10s' -r
complete -c opampctl -n "__fish_opampctl_using_subcommand configs; and not __fish_seen_subcommand_from apply list show history diff rollback delete" -s q -l quiet -d 'Print nothing on success: the exit code is the answer (errors still go to stderr)'
complete -c opampctl -n "__fish_opampctl_using_subcommand configs; and not __fish_seen_subcommand_from apply list show history diff rollback delete" -l no-color -d 'No colour (also with NO_COLOR set or TERM=dumb)'
complete -c opampctl -n "__fish_opampctl_using_subcommand configs; and not __fish_seen_subcommand_from apply list show history diff rollback delete" -s h -l help -d 'Print help (see more with \'--help\')'
complete -c opampctl -n "__fish_opampctl_using_subcommand configs; and not __fish_seen_subcommand_from apply list show history diff rollback delete" -f -a "apply" -d 'Create or update a configuration from a file (idempotent)'
complete -c opampctl -n "__fish_opampctl_using_subcommand configs; and not __fish_seen_subcommand_from apply list show history diff rollback delete" -f -a "list" -d 'List configurations'
complete -c opampctl -n "__fish_opampctl_using_subcommand configs; and not __fish_seen_subcommand_from apply list show history diff rollback delete" -f -a "show" -d 'Show a configuration\'s newest (or a given) version'
complete -c opampctl -n "__fish_opampctl_using_subcommand configs; and not __fish_seen_subcommand_from apply list show history diff rollback delete" -f -a "history" -d 'List every version of a configuration'
complete -c opampctl -n "__fish_opampctl_using_subcommand configs; and not __fish_seen_subcommand_from apply list show history diff rollback delete" -f -a "diff" -d 'Show what changed between two versions'
complete -c opampctl -n "__fish_opampctl_using_subcommand configs; and not __fish_seen_subcommand_from apply list show history diff rollback delete" -f -a "rollback" -d 'Make an earlier version\'s body the newest version again'
complete -c opampctl -n "__fish_opampctl_using_subcommand configs; and not __fish_seen_subcommand_from apply list show history diff rollback delete" -f -a "delete" -d 'Delete a configuration and its versions'
complete -c opampctl -n "__fish_opampctl_using_subcommand configs; and __fish_seen_subcommand_from apply" -s f -l file -d 'The configuration file (- for standard input)' -r -F
complete -c opampctl -n "__fish_opampctl_using_subcommand configs; and __fish_seen_subcommand_from apply" -l name -d 'Configuration name [default: the file name without its extension]' -r
complete -c opampctl -n "__fish_opampctl_using_subcommand configs; and __fish_seen_subcommand_from apply" -l selector -d 'Which agents get it: k=v, k!=v, k; comma means and' -r
complete -c opampctl -n "__fish_opampctl_using_subcommand configs; and __fish_seen_subcommand_from apply" -l content-type -d 'Content type [default: from the extension: .yaml/.yml text/yaml, .json application/json, else text/plain]' -r
complete -c opampctl -n "__fish_opampctl_using_subcommand configs; and __fish_seen_subcommand_from apply" -l description -d 'Description of the configuration' -r
complete -c opampctl -n "__fish_opampctl_using_subcommand configs; and __fish_seen_subcommand_from apply" -l server -d 'Base URL of opampd [default: http://127.0.0.1:8080]' -r
complete -c opampctl -n "__fish_opampctl_using_subcommand configs; and __fish_seen_subcommand_from apply" -l token -d 'API token (an admin or operator token, or a login JWT)' -r
complete -c opampctl -n "__fish_opampctl_using_subcommand configs; and __fish_seen_subcommand_from apply" -l token-file -d 'File holding the API token [default: ./data/admin.token, then /var/lib/opampd/admin.token, for a server on this host]' -r -F
complete -c opampctl -n "__fish_opampctl_using_subcommand configs; and __fish_seen_subcommand_from apply" -l context -d 'Context of the config file to use (server and token file)' -r
complete -c opampctl -n "__fish_opampctl_using_subcommand configs; and __fish_seen_subcommand_from apply" -s o -l output -d 'Output format' -r -f -a "table\t'Aligned columns for people'
wide\t'Like table, with more columns'
json\t'JSON: stable field names, for scripts'
yaml\t'YAML, same fields as JSON'"
complete -c opampctl -n "__fish_opampctl_using_subcommand configs; and __fish_seen_subcommand_from apply" -l ca-file -d 'PEM file of a CA to trust for an https server (besides the built-in roots)' -r -F
complete -c opampctl -n "__fish_opampctl_using_subcommand configs; and __fish_seen_subcommand_from apply" -l request-timeout -d 'Timeout of one request to the server, e.g. 10s' -r
complete -c opampctl -n "__fish_opampctl_using_subcommand configs; and __fish_seen_subcommand_from apply" -s q -l quiet -d 'Print nothing on success: the exit code is the answer (errors still go to stderr)'
complete -c opampctl -n "__fish_opampctl_using_subcommand configs; and __fish_seen_subcommand_from apply" -l no-color -d 'No colour (also with NO_COLOR set or TERM=dumb)'
complete -c opampctl -n "__fish_opampctl_using_subcommand configs; and __fish_seen_subcommand_from apply" -s h -l help -d 'Print help (see more with \'--help\')'
complete -c opampctl -n "__fish_opampctl_using_subcommand configs; and __fish_seen_subcommand_from list" -l server -d 'Base URL of opampd [default: http://127.0.0.1:8080]' -r
complete -c opampctl -n "__fish_opampctl_using_subcommand configs; and __fish_seen_subcommand_from list" -l token -d 'API token (an admin or operator token, or a login JWT)' -r
complete -c opampctl -n "__fish_opampctl_using_subcommand configs; and __fish_seen_subcommand_from list" -l token-file -d 'File holding the API token [default: ./data/admin.token, then /var/lib/opampd/admin.token, for a server on this host]' -r -F
complete -c opampctl -n "__fish_opampctl_using_subcommand configs; and __fish_seen_subcommand_from list" -l context -d 'Context of the config file to use (server and token file)' -r
complete -c opampctl -n "__fish_opampctl_using_subcommand configs; and __fish_seen_subcommand_from list" -s o -l output -d 'Output format' -r -f -a "table\t'Aligned columns for people'
wide\t'Like table, with more columns'
json\t'JSON: stable field names, for scripts'
yaml\t'YAML, same fields as JSON'"
complete -c opampctl -n "__fish_opampctl_using_subcommand configs; and __fish_seen_subcommand_from list" -l ca-file -d 'PEM file of a CA to trust for an https server (besides the built-in roots)' -r -F
complete -c opampctl -n "__fish_opampctl_using_subcommand configs; and __fish_seen_subcommand_from list" -l request-timeout -d 'Timeout of one request to the server, e.g. 10s' -r
complete -c opampctl -n "__fish_opampctl_using_subcommand configs; and __fish_seen_subcommand_from list" -s q -l quiet -d 'Print nothing on success: the exit code is the answer (errors still go to stderr)'
complete -c opampctl -n "__fish_opampctl_using_subcommand configs; and __fish_seen_subcommand_from list" -l no-color -d 'No colour (also with NO_COLOR set or TERM=dumb)'
complete -c opampctl -n "__fish_opampctl_using_subcommand configs; and __fish_seen_subcommand_from list" -s h -l help -d 'Print help (see more with \'--help\')'
complete -c opampctl -n "__fish_opampctl_using_subcommand configs; and __fish_seen_subcommand_from show" -l version -d 'The version to show' -r
complete -c opampctl -n "__fish_opampctl_using_subcommand configs; and __fish_seen_subcommand_from show" -l server -d 'Base URL of opampd [default: http://127.0.0.1:8080]' -r
complete -c opampctl -n "__fish_opampctl_using_subcommand configs; and __fish_seen_subcommand_from show" -l token -d 'API token (an admin or operator token, or a login JWT)' -r
complete -c opampctl -n "__fish_opampctl_using_subcommand configs; and __fish_seen_subcommand_from show" -l token-file -d 'File holding the API token [default: ./data/admin.token, then /var/lib/opampd/admin.token, for a server on this host]' -r -F
complete -c opampctl -n "__fish_opampctl_using_subcommand configs; and __fish_seen_subcommand_from show" -l context -d 'Context of the config file to use (server and token file)' -r
complete -c opampctl -n "__fish_opampctl_using_subcommand configs; and __fish_seen_subcommand_from show" -s o -l output -d 'Output format' -r -f -a "table\t'Aligned columns for people'
wide\t'Like table, with more columns'
json\t'JSON: stable field names, for scripts'
yaml\t'YAML, same fields as JSON'"
complete -c opampctl -n "__fish_opampctl_using_subcommand configs; and __fish_seen_subcommand_from show" -l ca-file -d 'PEM file of a CA to trust for an https server (besides the built-in roots)' -r -F
complete -c opampctl -n "__fish_opampctl_using_subcommand configs; and __fish_seen_subcommand_from show" -l request-timeout -d 'Timeout of one request to the server, e.g. 10s' -r
complete -c opampctl -n "__fish_opampctl_using_subcommand configs; and __fish_seen_subcommand_from show" -s q -l quiet -d 'Print nothing on success: the exit code is the answer (errors still go to stderr)'
complete -c opampctl -n "__fish_opampctl_using_subcommand configs; and __fish_seen_subcommand_from show" -l no-color -d 'No colour (also with NO_COLOR set or TERM=dumb)'
complete -c opampctl -n "__fish_opampctl_using_subcommand configs; and __fish_seen_subcommand_from show" -s h -l help -d 'Print help (see more with \'--help\')'
complete -c opampctl -n "__fish_opampctl_using_subcommand configs; and __fish_seen_subcommand_from history" -l server -d 'Base URL of opampd [default: http://127.0.0.1:8080]' -r
complete -c opampctl -n "__fish_opampctl_using_subcommand configs; and __fish_seen_subcommand_from history" -l token -d 'API token (an admin or operator token, or a login JWT)' -r
complete -c opampctl -n "__fish_opampctl_using_subcommand configs; and __fish_seen_subcommand_from history" -l token-file -d 'File holding the API token [default: ./data/admin.token, then /var/lib/opampd/admin.token, for a server on this host]' -r -F
complete -c opampctl -n "__fish_opampctl_using_subcommand configs; and __fish_seen_subcommand_from history" -l context -d 'Context of the config file to use (server and token file)' -r
complete -c opampctl -n "__fish_opampctl_using_subcommand configs; and __fish_seen_subcommand_from history" -s o -l output -d 'Output format' -r -f -a "table\t'Aligned columns for people'
wide\t'Like table, with more columns'
json\t'JSON: stable field names, for scripts'
yaml\t'YAML, same fields as JSON'"
complete -c opampctl -n "__fish_opampctl_using_subcommand configs; and __fish_seen_subcommand_from history" -l ca-file -d 'PEM file of a CA to trust for an https server (besides the built-in roots)' -r -F
complete -c opampctl -n "__fish_opampctl_using_subcommand configs; and __fish_seen_subcommand_from history" -l request-timeout -d 'Timeout of one request to the server, e.g. 10s' -r
complete -c opampctl -n "__fish_opampctl_using_subcommand configs; and __fish_seen_subcommand_from history" -s q -l quiet -d 'Print nothing on success: the exit code is the answer (errors still go to stderr)'
complete -c opampctl -n "__fish_opampctl_using_subcommand configs; and __fish_seen_subcommand_from history" -l no-color -d 'No colour (also with NO_COLOR set or TERM=dumb)'
complete -c opampctl -n "__fish_opampctl_using_subcommand configs; and __fish_seen_subcommand_from history" -s h -l help -d 'Print help (see more with \'--help\')'
complete -c opampctl -n "__fish_opampctl_using_subcommand configs; and __fish_seen_subcommand_from diff" -l from -d 'Older version [default: the one before --to]' -r
complete -c opampctl -n "__fish_opampctl_using_subcommand configs; and __fish_seen_subcommand_from diff" -l to -d 'Newer version [default: the newest]' -r
complete -c opampctl -n "__fish_opampctl_using_subcommand configs; and __fish_seen_subcommand_from diff" -l server -d 'Base URL of opampd [default: http://127.0.0.1:8080]' -r
complete -c opampctl -n "__fish_opampctl_using_subcommand configs; and __fish_seen_subcommand_from diff" -l token -d 'API token (an admin or operator token, or a login JWT)' -r
complete -c opampctl -n "__fish_opampctl_using_subcommand configs; and __fish_seen_subcommand_from diff" -l token-file -d 'File holding the API token [default: ./data/admin.token, then /var/lib/opampd/admin.token, for a server on this host]' -r -F
complete -c opampctl -n "__fish_opampctl_using_subcommand configs; and __fish_seen_subcommand_from diff" -l context -d 'Context of the config file to use (server and token file)' -r
complete -c opampctl -n "__fish_opampctl_using_subcommand configs; and __fish_seen_subcommand_from diff" -s o -l output -d 'Output format' -r -f -a "table\t'Aligned columns for people'
wide\t'Like table, with more columns'
json\t'JSON: stable field names, for scripts'
yaml\t'YAML, same fields as JSON'"
complete -c opampctl -n "__fish_opampctl_using_subcommand configs; and __fish_seen_subcommand_from diff" -l ca-file -d 'PEM file of a CA to trust for an https server (besides the built-in roots)' -r -F
complete -c opampctl -n "__fish_opampctl_using_subcommand configs; and __fish_seen_subcommand_from diff" -l request-timeout -d 'Timeout of one request to the server, e.g. 10s' -r
complete -c opampctl -n "__fish_opampctl_using_subcommand configs; and __fish_seen_subcommand_from diff" -s q -l quiet -d 'Print nothing on success: the exit code is the answer (errors still go to stderr)'
complete -c opampctl -n "__fish_opampctl_using_subcommand configs; and __fish_seen_subcommand_from diff" -l no-color -d 'No colour (also with NO_COLOR set or TERM=dumb)'
complete -c opampctl -n "__fish_opampctl_using_subcommand configs; and __fish_seen_subcommand_from diff" -s h -l help -d 'Print help (see more with \'--help\')'
complete -c opampctl -n "__fish_opampctl_using_subcommand configs; and __fish_seen_subcommand_from rollback" -l to -d 'The version to go back to [default: the one before the newest]' -r
complete -c opampctl -n "__fish_opampctl_using_subcommand configs; and __fish_seen_subcommand_from rollback" -l server -d 'Base URL of opampd [default: http://127.0.0.1:8080]' -r
complete -c opampctl -n "__fish_opampctl_using_subcommand configs; and __fish_seen_subcommand_from rollback" -l token -d 'API token (an admin or operator token, or a login JWT)' -r
complete -c opampctl -n "__fish_opampctl_using_subcommand configs; and __fish_seen_subcommand_from rollback" -l token-file -d 'File holding the API token [default: ./data/admin.token, then /var/lib/opampd/admin.token, for a server on this host]' -r -F
complete -c opampctl -n "__fish_opampctl_using_subcommand configs; and __fish_seen_subcommand_from rollback" -l context -d 'Context of the config file to use (server and token file)' -r
complete -c opampctl -n "__fish_opampctl_using_subcommand configs; and __fish_seen_subcommand_from rollback" -s o -l output -d 'Output format' -r -f -a "table\t'Aligned columns for people'
wide\t'Like table, with more columns'
json\t'JSON: stable field names, for scripts'
yaml\t'YAML, same fields as JSON'"
complete -c opampctl -n "__fish_opampctl_using_subcommand configs; and __fish_seen_subcommand_from rollback" -l ca-file -d 'PEM file of a CA to trust for an https server (besides the built-in roots)' -r -F
complete -c opampctl -n "__fish_opampctl_using_subcommand configs; and __fish_seen_subcommand_from rollback" -l request-timeout -d 'Timeout of one request to the server, e.g. 10s' -r
complete -c opampctl -n "__fish_opampctl_using_subcommand configs; and __fish_seen_subcommand_from rollback" -s q -l quiet -d 'Print nothing on success: the exit code is the answer (errors still go to stderr)'
complete -c opampctl -n "__fish_opampctl_using_subcommand configs; and __fish_seen_subcommand_from rollback" -l no-color -d 'No colour (also with NO_COLOR set or TERM=dumb)'
complete -c opampctl -n "__fish_opampctl_using_subcommand configs; and __fish_seen_subcommand_from rollback" -s h -l help -d 'Print help (see more with \'--help\')'
complete -c opampctl -n "__fish_opampctl_using_subcommand configs; and __fish_seen_subcommand_from delete" -l server -d 'Base URL of opampd [default: http://127.0.0.1:8080]' -r
complete -c opampctl -n "__fish_opampctl_using_subcommand configs; and __fish_seen_subcommand_from delete" -l token -d 'API token (an admin or operator token, or a login JWT)' -r
complete -c opampctl -n "__fish_opampctl_using_subcommand configs; and __fish_seen_subcommand_from delete" -l token-file -d 'File holding the API token [default: ./data/admin.token, then /var/lib/opampd/admin.token, for a server on this host]' -r -F
complete -c opampctl -n "__fish_opampctl_using_subcommand configs; and __fish_seen_subcommand_from delete" -l context -d 'Context of the config file to use (server and token file)' -r
complete -c opampctl -n "__fish_opampctl_using_subcommand configs; and __fish_seen_subcommand_from delete" -s o -l output -d 'Output format' -r -f -a "table\t'Aligned columns for people'
wide\t'Like table, with more columns'
json\t'JSON: stable field names, for scripts'
yaml\t'YAML, same fields as JSON'"
complete -c opampctl -n "__fish_opampctl_using_subcommand configs; and __fish_seen_subcommand_from delete" -l ca-file -d 'PEM file of a CA to trust for an https server (besides the built-in roots)' -r -F
complete -c opampctl -n "__fish_opampctl_using_subcommand configs; and __fish_seen_subcommand_from delete" -l request-timeout -d 'Timeout of one request to the server, e.g. 10s' -r
complete -c opampctl -n "__fish_opampctl_using_subcommand configs; and __fish_seen_subcommand_from delete" -l force -d 'Delete even if it is rolled out to agents'
complete -c opampctl -n "__fish_opampctl_using_subcommand configs; and __fish_seen_subcommand_from delete" -s q -l quiet -d 'Print nothing on success: the exit code is the answer (errors still go to stderr)'
complete -c opampctl -n "__fish_opampctl_using_subcommand configs; and __fish_seen_subcommand_from delete" -l no-color -d 'No colour (also with NO_COLOR set or TERM=dumb)'
complete -c opampctl -n "__fish_opampctl_using_subcommand configs; and __fish_seen_subcommand_from delete" -s h -l help -d 'Print help (see more with \'--help\')'
complete -c opampctl -n "__fish_opampctl_using_subcommand rollout; and not __fish_seen_subcommand_from start status pause resume" -l server -d 'Base URL of opampd [default: http://127.0.0.1:8080]' -r
complete -c opampctl -n "__fish_opampctl_using_subcommand rollout; and not __fish_seen_subcommand_from start status pause resume" -l token -d 'API token (an admin or operator token, or a login JWT)' -r
complete -c opampctl -n "__fish_opampctl_using_subcommand rollout; and not __fish_seen_subcommand_from start status pause resume" -l token-file -d 'File holding the API token [default: ./data/admin.token, then /var/lib/opampd/admin.token, for a server on this host]' -r -F
complete -c opampctl -n "__fish_opampctl_using_subcommand rollout; and not __fish_seen_subcommand_from start status pause resume" -l context -d 'Context of the config file to use (server and token file)' -r
complete -c opampctl -n "__fish_opampctl_using_subcommand rollout; and not __fish_seen_subcommand_from start status pause resume" -s o -l output -d 'Output format' -r -f -a "table\t'Aligned columns for people'
wide\t'Like table, with more columns'
json\t'JSON: stable field names, for scripts'
yaml\t'YAML, same fields as JSON'"
complete -c opampctl -n "__fish_opampctl_using_subcommand rollout; and not __fish_seen_subcommand_from start status pause resume" -l ca-file -d 'PEM file of a CA to trust for an https server (besides the built-in roots)' -r -F
complete -c opampctl -n "__fish_opampctl_using_subcommand rollout; and not __fish_seen_subcommand_from start status pause resume" -l request-timeout -d 'Timeout of one request to the server, e.g. 10s' -r
complete -c opampctl -n "__fish_opampctl_using_subcommand rollout; and not __fish_seen_subcommand_from start status pause resume" -s q -l quiet -d 'Print nothing on success: the exit code is the answer (errors still go to stderr)'
complete -c opampctl -n "__fish_opampctl_using_subcommand rollout; and not __fish_seen_subcommand_from start status pause resume" -l no-color -d 'No colour (also with NO_COLOR set or TERM=dumb)'
complete -c opampctl -n "__fish_opampctl_using_subcommand rollout; and not __fish_seen_subcommand_from start status pause resume" -s h -l help -d 'Print help (see more with \'--help\')'
complete -c opampctl -n "__fish_opampctl_using_subcommand rollout; and not __fish_seen_subcommand_from start status pause resume" -f -a "start" -d 'Start rolling a version out (the newest by default)'
complete -c opampctl -n "__fish_opampctl_using_subcommand rollout; and not __fish_seen_subcommand_from start status pause resume" -f -a "status" -d 'Show a rollout\'s progress and the agents it waits for; exit 0 when completed or running, 1 when failed or paused'
complete -c opampctl -n "__fish_opampctl_using_subcommand rollout; and not __fish_seen_subcommand_from start status pause resume" -f -a "pause" -d 'Pause a running rollout'
complete -c opampctl -n "__fish_opampctl_using_subcommand rollout; and not __fish_seen_subcommand_from start status pause resume" -f -a "resume" -d 'Resume a paused rollout'
complete -c opampctl -n "__fish_opampctl_using_subcommand rollout; and __fish_seen_subcommand_from start" -l version -d 'Version to roll out' -r
complete -c opampctl -n "__fish_opampctl_using_subcommand rollout; and __fish_seen_subcommand_from start" -l batch-size -d 'Agents per batch' -r
complete -c opampctl -n "__fish_opampctl_using_subcommand rollout; and __fish_seen_subcommand_from start" -l max-failures -d 'Failure allowance: pause the rollout when more than N agents fail (default 0: at the first failure)' -r
complete -c opampctl -n "__fish_opampctl_using_subcommand rollout; and __fish_seen_subcommand_from start" -l batch-timeout -d 'Time a batch may take; then its agents that have not reported are counted unconfirmed and the rollout moves on (0: wait for every report) [default: the server\'s rollouts.batch_timeout_seconds, 300s]' -r
complete -c opampctl -n "__fish_opampctl_using_subcommand rollout; and __fish_seen_subcommand_from start" -l server -d 'Base URL of opampd [default: http://127.0.0.1:8080]' -r
complete -c opampctl -n "__fish_opampctl_using_subcommand rollout; and __fish_seen_subcommand_from start" -l token -d 'API token (an admin or operator token, or a login JWT)' -r
complete -c opampctl -n "__fish_opampctl_using_subcommand rollout; and __fish_seen_subcommand_from start" -l token-file -d 'File holding the API token [default: ./data/admin.token, then /var/lib/opampd/admin.token, for a server on this host]' -r -F
complete -c opampctl -n "__fish_opampctl_using_subcommand rollout; and __fish_seen_subcommand_from start" -l context -d 'Context of the config file to use (server and token file)' -r
complete -c opampctl -n "__fish_opampctl_using_subcommand rollout; and __fish_seen_subcommand_from start" -s o -l output -d 'Output format' -r -f -a "table\t'Aligned columns for people'
wide\t'Like table, with more columns'
json\t'JSON: stable field names, for scripts'
yaml\t'YAML, same fields as JSON'"
complete -c opampctl -n "__fish_opampctl_using_subcommand rollout; and __fish_seen_subcommand_from start" -l ca-file -d 'PEM file of a CA to trust for an https server (besides the built-in roots)' -r -F
complete -c opampctl -n "__fish_opampctl_using_subcommand rollout; and __fish_seen_subcommand_from start" -l request-timeout -d 'Timeout of one request to the server, e.g. 10s' -r
complete -c opampctl -n "__fish_opampctl_using_subcommand rollout; and __fish_seen_subcommand_from start" -l dry-run -d 'Change nothing: list the targeted agents and the components each lacks'
complete -c opampctl -n "__fish_opampctl_using_subcommand rollout; and __fish_seen_subcommand_from start" -l force -d 'Also roll out to agents whose available components lack one the configuration uses (skipped by default)'
complete -c opampctl -n "__fish_opampctl_using_subcommand rollout; and __fish_seen_subcommand_from start" -s q -l quiet -d 'Print nothing on success: the exit code is the answer (errors still go to stderr)'
complete -c opampctl -n "__fish_opampctl_using_subcommand rollout; and __fish_seen_subcommand_from start" -l no-color -d 'No colour (also with NO_COLOR set or TERM=dumb)'
complete -c opampctl -n "__fish_opampctl_using_subcommand rollout; and __fish_seen_subcommand_from start" -s h -l help -d 'Print help (see more with \'--help\')'
complete -c opampctl -n "__fish_opampctl_using_subcommand rollout; and __fish_seen_subcommand_from status" -l interval -d 'Poll interval of --watch' -r
complete -c opampctl -n "__fish_opampctl_using_subcommand rollout; and __fish_seen_subcommand_from status" -l server -d 'Base URL of opampd [default: http://127.0.0.1:8080]' -r
complete -c opampctl -n "__fish_opampctl_using_subcommand rollout; and __fish_seen_subcommand_from status" -l token -d 'API token (an admin or operator token, or a login JWT)' -r
complete -c opampctl -n "__fish_opampctl_using_subcommand rollout; and __fish_seen_subcommand_from status" -l token-file -d 'File holding the API token [default: ./data/admin.token, then /var/lib/opampd/admin.token, for a server on this host]' -r -F
complete -c opampctl -n "__fish_opampctl_using_subcommand rollout; and __fish_seen_subcommand_from status" -l context -d 'Context of the config file to use (server and token file)' -r
complete -c opampctl -n "__fish_opampctl_using_subcommand rollout; and __fish_seen_subcommand_from status" -s o -l output -d 'Output format' -r -f -a "table\t'Aligned columns for people'
wide\t'Like table, with more columns'
json\t'JSON: stable field names, for scripts'
yaml\t'YAML, same fields as JSON'"
complete -c opampctl -n "__fish_opampctl_using_subcommand rollout; and __fish_seen_subcommand_from status" -l ca-file -d 'PEM file of a CA to trust for an https server (besides the built-in roots)' -r -F
complete -c opampctl -n "__fish_opampctl_using_subcommand rollout; and __fish_seen_subcommand_from status" -l request-timeout -d 'Timeout of one request to the server, e.g. 10s' -r
complete -c opampctl -n "__fish_opampctl_using_subcommand rollout; and __fish_seen_subcommand_from status" -s w -l watch -d 'Follow the progress until the rollout completes, fails or pauses'
complete -c opampctl -n "__fish_opampctl_using_subcommand rollout; and __fish_seen_subcommand_from status" -s q -l quiet -d 'Print nothing on success: the exit code is the answer (errors still go to stderr)'
complete -c opampctl -n "__fish_opampctl_using_subcommand rollout; and __fish_seen_subcommand_from status" -l no-color -d 'No colour (also with NO_COLOR set or TERM=dumb)'
complete -c opampctl -n "__fish_opampctl_using_subcommand rollout; and __fish_seen_subcommand_from status" -s h -l help -d 'Print help (see more with \'--help\')'
complete -c opampctl -n "__fish_opampctl_using_subcommand rollout; and __fish_seen_subcommand_from pause" -l server -d 'Base URL of opampd [default: http://127.0.0.1:8080]' -r
complete -c opampctl -n "__fish_opampctl_using_subcommand rollout; and __fish_seen_subcommand_from pause" -l token -d 'API token (an admin or operator token, or a login JWT)' -r
complete -c opampctl -n "__fish_opampctl_using_subcommand rollout; and __fish_seen_subcommand_from pause" -l token-file -d 'File holding the API token [default: ./data/admin.token, then /var/lib/opampd/admin.token, for a server on this host]' -r -F
complete -c opampctl -n "__fish_opampctl_using_subcommand rollout; and __fish_seen_subcommand_from pause" -l context -d 'Context of the config file to use (server and token file)' -r
complete -c opampctl -n "__fish_opampctl_using_subcommand rollout; and __fish_seen_subcommand_from pause" -s o -l output -d 'Output format' -r -f -a "table\t'Aligned columns for people'
wide\t'Like table, with more columns'
json\t'JSON: stable field names, for scripts'
yaml\t'YAML, same fields as JSON'"
complete -c opampctl -n "__fish_opampctl_using_subcommand rollout; and __fish_seen_subcommand_from pause" -l ca-file -d 'PEM file of a CA to trust for an https server (besides the built-in roots)' -r -F
complete -c opampctl -n "__fish_opampctl_using_subcommand rollout; and __fish_seen_subcommand_from pause" -l request-timeout -d 'Timeout of one request to the server, e.g. 10s' -r
complete -c opampctl -n "__fish_opampctl_using_subcommand rollout; and __fish_seen_subcommand_from pause" -s q -l quiet -d 'Print nothing on success: the exit code is the answer (errors still go to stderr)'
complete -c opampctl -n "__fish_opampctl_using_subcommand rollout; and __fish_seen_subcommand_from pause" -l no-color -d 'No colour (also with NO_COLOR set or TERM=dumb)'
complete -c opampctl -n "__fish_opampctl_using_subcommand rollout; and __fish_seen_subcommand_from pause" -s h -l help -d 'Print help (see more with \'--help\')'
complete -c opampctl -n "__fish_opampctl_using_subcommand rollout; and __fish_seen_subcommand_from resume" -l max-failures -d 'A new failure allowance: pause when more than N agents fail (to go on after failures paused it)' -r
complete -c opampctl -n "__fish_opampctl_using_subcommand rollout; and __fish_seen_subcommand_from resume" -l server -d 'Base URL of opampd [default: http://127.0.0.1:8080]' -r
complete -c opampctl -n "__fish_opampctl_using_subcommand rollout; and __fish_seen_subcommand_from resume" -l token -d 'API token (an admin or operator token, or a login JWT)' -r
complete -c opampctl -n "__fish_opampctl_using_subcommand rollout; and __fish_seen_subcommand_from resume" -l token-file -d 'File holding the API token [default: ./data/admin.token, then /var/lib/opampd/admin.token, for a server on this host]' -r -F
complete -c opampctl -n "__fish_opampctl_using_subcommand rollout; and __fish_seen_subcommand_from resume" -l context -d 'Context of the config file to use (server and token file)' -r
complete -c opampctl -n "__fish_opampctl_using_subcommand rollout; and __fish_seen_subcommand_from resume" -s o -l output -d 'Output format' -r -f -a "table\t'Aligned columns for people'
wide\t'Like table, with more columns'
json\t'JSON: stable field names, for scripts'
yaml\t'YAML, same fields as JSON'"
complete -c opampctl -n "__fish_opampctl_using_subcommand rollout; and __fish_seen_subcommand_from resume" -l ca-file -d 'PEM file of a CA to trust for an https server (besides the built-in roots)' -r -F
complete -c opampctl -n "__fish_opampctl_using_subcommand rollout; and __fish_seen_subcommand_from resume" -l request-timeout -d 'Timeout of one request to the server, e.g. 10s' -r
complete -c opampctl -n "__fish_opampctl_using_subcommand rollout; and __fish_seen_subcommand_from resume" -s q -l quiet -d 'Print nothing on success: the exit code is the answer (errors still go to stderr)'
complete -c opampctl -n "__fish_opampctl_using_subcommand rollout; and __fish_seen_subcommand_from resume" -l no-color -d 'No colour (also with NO_COLOR set or TERM=dumb)'
complete -c opampctl -n "__fish_opampctl_using_subcommand rollout; and __fish_seen_subcommand_from resume" -s h -l help -d 'Print help (see more with \'--help\')'
complete -c opampctl -n "__fish_opampctl_using_subcommand packages; and not __fish_seen_subcommand_from add upload list show delete rollout" -l server -d 'Base URL of opampd [default: http://127.0.0.1:8080]' -r
complete -c opampctl -n "__fish_opampctl_using_subcommand packages; and not __fish_seen_subcommand_from add upload list show delete rollout" -l token -d 'API token (an admin or operator token, or a login JWT)' -r
complete -c opampctl -n "__fish_opampctl_using_subcommand packages; and not __fish_seen_subcommand_from add upload list show delete rollout" -l token-file -d 'File holding the API token [default: ./data/admin.token, then /var/lib/opampd/admin.token, for a server on this host]' -r -F
complete -c opampctl -n "__fish_opampctl_using_subcommand packages; and not __fish_seen_subcommand_from add upload list show delete rollout" -l context -d 'Context of the config file to use (server and token file)' -r
complete -c opampctl -n "__fish_opampctl_using_subcommand packages; and not __fish_seen_subcommand_from add upload list show delete rollout" -s o -l output -d 'Output format' -r -f -a "table\t'Aligned columns for people'
wide\t'Like table, with more columns'
json\t'JSON: stable field names, for scripts'
yaml\t'YAML, same fields as JSON'"
complete -c opampctl -n "__fish_opampctl_using_subcommand packages; and not __fish_seen_subcommand_from add upload list show delete rollout" -l ca-file -d 'PEM file of a CA to trust for an https server (besides the built-in roots)' -r -F
complete -c opampctl -n "__fish_opampctl_using_subcommand packages; and not __fish_seen_subcommand_from add upload list show delete rollout" -l request-timeout -d 'Timeout of one request to the server, e.g. 10s' -r
complete -c opampctl -n "__fish_opampctl_using_subcommand packages; and not __fish_seen_subcommand_from add upload list show delete rollout" -s q -l quiet -d 'Print nothing on success: the exit code is the answer (errors still go to stderr)'
complete -c opampctl -n "__fish_opampctl_using_subcommand packages; and not __fish_seen_subcommand_from add upload list show delete rollout" -l no-color -d 'No colour (also with NO_COLOR set or TERM=dumb)'
complete -c opampctl -n "__fish_opampctl_using_subcommand packages; and not __fish_seen_subcommand_from add upload list show delete rollout" -s h -l help -d 'Print help (see more with \'--help\')'
complete -c opampctl -n "__fish_opampctl_using_subcommand packages; and not __fish_seen_subcommand_from add upload list show delete rollout" -f -a "add" -d 'List a package version by reference: its download URL, SHA-256 and signature (admin)'
complete -c opampctl -n "__fish_opampctl_using_subcommand packages; and not __fish_seen_subcommand_from add upload list show delete rollout" -f -a "upload" -d 'Upload a package file to opampd, which stores it and serves it to agents (admin)'
complete -c opampctl -n "__fish_opampctl_using_subcommand packages; and not __fish_seen_subcommand_from add upload list show delete rollout" -f -a "list" -d 'List the package versions in the catalogue'
complete -c opampctl -n "__fish_opampctl_using_subcommand packages; and not __fish_seen_subcommand_from add upload list show delete rollout" -f -a "show" -d 'Show a package version and its files'
complete -c opampctl -n "__fish_opampctl_using_subcommand packages; and not __fish_seen_subcommand_from add upload list show delete rollout" -f -a "delete" -d 'Delete a package version from the catalogue (admin)'
complete -c opampctl -n "__fish_opampctl_using_subcommand packages; and not __fish_seen_subcommand_from add upload list show delete rollout" -f -a "rollout" -d 'Roll a package version out to agents in staged batches (operator)'
complete -c opampctl -n "__fish_opampctl_using_subcommand packages; and __fish_seen_subcommand_from add" -l platform -d 'The platform of the file: OS/ARCH as agents report os.type and host.arch (any matches every one)' -r
complete -c opampctl -n "__fish_opampctl_using_subcommand packages; and __fish_seen_subcommand_from add" -l url -d 'Where agents download the file' -r
complete -c opampctl -n "__fish_opampctl_using_subcommand packages; and __fish_seen_subcommand_from add" -l sha256 -d 'SHA-256 of the file (64 hex digits)' -r
complete -c opampctl -n "__fish_opampctl_using_subcommand packages; and __fish_seen_subcommand_from add" -l signature-file -d 'The signature file, e.g. the release\'s .sigstore.json bundle' -r -F
complete -c opampctl -n "__fish_opampctl_using_subcommand packages; and __fish_seen_subcommand_from add" -l server -d 'Base URL of opampd [default: http://127.0.0.1:8080]' -r
complete -c opampctl -n "__fish_opampctl_using_subcommand packages; and __fish_seen_subcommand_from add" -l token -d 'API token (an admin or operator token, or a login JWT)' -r
complete -c opampctl -n "__fish_opampctl_using_subcommand packages; and __fish_seen_subcommand_from add" -l token-file -d 'File holding the API token [default: ./data/admin.token, then /var/lib/opampd/admin.token, for a server on this host]' -r -F
complete -c opampctl -n "__fish_opampctl_using_subcommand packages; and __fish_seen_subcommand_from add" -l context -d 'Context of the config file to use (server and token file)' -r
complete -c opampctl -n "__fish_opampctl_using_subcommand packages; and __fish_seen_subcommand_from add" -s o -l output -d 'Output format' -r -f -a "table\t'Aligned columns for people'
wide\t'Like table, with more columns'
json\t'JSON: stable field names, for scripts'
yaml\t'YAML, same fields as JSON'"
complete -c opampctl -n "__fish_opampctl_using_subcommand packages; and __fish_seen_subcommand_from add" -l ca-file -d 'PEM file of a CA to trust for an https server (besides the built-in roots)' -r -F
complete -c opampctl -n "__fish_opampctl_using_subcommand packages; and __fish_seen_subcommand_from add" -l request-timeout -d 'Timeout of one request to the server, e.g. 10s' -r
complete -c opampctl -n "__fish_opampctl_using_subcommand packages; and __fish_seen_subcommand_from add" -l addon -d 'An addon rather than the agent itself'
complete -c opampctl -n "__fish_opampctl_using_subcommand packages; and __fish_seen_subcommand_from add" -l unsigned -d 'Accept a file without a signature'
complete -c opampctl -n "__fish_opampctl_using_subcommand packages; and __fish_seen_subcommand_from add" -l allow-http -d 'Accept an http:// URL'
complete -c opampctl -n "__fish_opampctl_using_subcommand packages; and __fish_seen_subcommand_from add" -l allow-downgrade -d 'Accept a version older than the newest one listed'
complete -c opampctl -n "__fish_opampctl_using_subcommand packages; and __fish_seen_subcommand_from add" -s q -l quiet -d 'Print nothing on success: the exit code is the answer (errors still go to stderr)'
complete -c opampctl -n "__fish_opampctl_using_subcommand packages; and __fish_seen_subcommand_from add" -l no-color -d 'No colour (also with NO_COLOR set or TERM=dumb)'
complete -c opampctl -n "__fish_opampctl_using_subcommand packages; and __fish_seen_subcommand_from add" -s h -l help -d 'Print help (see more with \'--help\')'
complete -c opampctl -n "__fish_opampctl_using_subcommand packages; and __fish_seen_subcommand_from upload" -l os -d 'The file\'s OS as agents report os.type (any matches every one)' -r
complete -c opampctl -n "__fish_opampctl_using_subcommand packages; and __fish_seen_subcommand_from upload" -l arch -d 'The file\'s architecture as agents report host.arch (any matches every one)' -r
complete -c opampctl -n "__fish_opampctl_using_subcommand packages; and __fish_seen_subcommand_from upload" -l platform -d 'OS/ARCH in one, as `packages add` takes it (instead of --os and --arch)' -r
complete -c opampctl -n "__fish_opampctl_using_subcommand packages; and __fish_seen_subcommand_from upload" -l sha256 -d 'The SHA-256 the file must have (64 hex digits); refused when it differs' -r
complete -c opampctl -n "__fish_opampctl_using_subcommand packages; and __fish_seen_subcommand_from upload" -l signature-file -l signature -d 'The signature file, e.g. the release\'s .sigstore.json bundle' -r -F
complete -c opampctl -n "__fish_opampctl_using_subcommand packages; and __fish_seen_subcommand_from upload" -l server -d 'Base URL of opampd [default: http://127.0.0.1:8080]' -r
complete -c opampctl -n "__fish_opampctl_using_subcommand packages; and __fish_seen_subcommand_from upload" -l token -d 'API token (an admin or operator token, or a login JWT)' -r
complete -c opampctl -n "__fish_opampctl_using_subcommand packages; and __fish_seen_subcommand_from upload" -l token-file -d 'File holding the API token [default: ./data/admin.token, then /var/lib/opampd/admin.token, for a server on this host]' -r -F
complete -c opampctl -n "__fish_opampctl_using_subcommand packages; and __fish_seen_subcommand_from upload" -l context -d 'Context of the config file to use (server and token file)' -r
complete -c opampctl -n "__fish_opampctl_using_subcommand packages; and __fish_seen_subcommand_from upload" -s o -l output -d 'Output format' -r -f -a "table\t'Aligned columns for people'
wide\t'Like table, with more columns'
json\t'JSON: stable field names, for scripts'
yaml\t'YAML, same fields as JSON'"
complete -c opampctl -n "__fish_opampctl_using_subcommand packages; and __fish_seen_subcommand_from upload" -l ca-file -d 'PEM file of a CA to trust for an https server (besides the built-in roots)' -r -F
complete -c opampctl -n "__fish_opampctl_using_subcommand packages; and __fish_seen_subcommand_from upload" -l request-timeout -d 'Timeout of one request to the server, e.g. 10s' -r
complete -c opampctl -n "__fish_opampctl_using_subcommand packages; and __fish_seen_subcommand_from upload" -l addon -d 'An addon rather than the agent itself'
complete -c opampctl -n "__fish_opampctl_using_subcommand packages; and __fish_seen_subcommand_from upload" -l unsigned -d 'Accept a file without a signature'
complete -c opampctl -n "__fish_opampctl_using_subcommand packages; and __fish_seen_subcommand_from upload" -l allow-downgrade -d 'Accept a version older than the newest one listed'
complete -c opampctl -n "__fish_opampctl_using_subcommand packages; and __fish_seen_subcommand_from upload" -s q -l quiet -d 'Print nothing on success: the exit code is the answer (errors still go to stderr)'
complete -c opampctl -n "__fish_opampctl_using_subcommand packages; and __fish_seen_subcommand_from upload" -l no-color -d 'No colour (also with NO_COLOR set or TERM=dumb)'
complete -c opampctl -n "__fish_opampctl_using_subcommand packages; and __fish_seen_subcommand_from upload" -s h -l help -d 'Print help (see more with \'--help\')'
complete -c opampctl -n "__fish_opampctl_using_subcommand packages; and __fish_seen_subcommand_from list" -l server -d 'Base URL of opampd [default: http://127.0.0.1:8080]' -r
complete -c opampctl -n "__fish_opampctl_using_subcommand packages; and __fish_seen_subcommand_from list" -l token -d 'API token (an admin or operator token, or a login JWT)' -r
complete -c opampctl -n "__fish_opampctl_using_subcommand packages; and __fish_seen_subcommand_from list" -l token-file -d 'File holding the API token [default: ./data/admin.token, then /var/lib/opampd/admin.token, for a server on this host]' -r -F
complete -c opampctl -n "__fish_opampctl_using_subcommand packages; and __fish_seen_subcommand_from list" -l context -d 'Context of the config file to use (server and token file)' -r
complete -c opampctl -n "__fish_opampctl_using_subcommand packages; and __fish_seen_subcommand_from list" -s o -l output -d 'Output format' -r -f -a "table\t'Aligned columns for people'
wide\t'Like table, with more columns'
json\t'JSON: stable field names, for scripts'
yaml\t'YAML, same fields as JSON'"
complete -c opampctl -n "__fish_opampctl_using_subcommand packages; and __fish_seen_subcommand_from list" -l ca-file -d 'PEM file of a CA to trust for an https server (besides the built-in roots)' -r -F
complete -c opampctl -n "__fish_opampctl_using_subcommand packages; and __fish_seen_subcommand_from list" -l request-timeout -d 'Timeout of one request to the server, e.g. 10s' -r
complete -c opampctl -n "__fish_opampctl_using_subcommand packages; and __fish_seen_subcommand_from list" -s q -l quiet -d 'Print nothing on success: the exit code is the answer (errors still go to stderr)'
complete -c opampctl -n "__fish_opampctl_using_subcommand packages; and __fish_seen_subcommand_from list" -l no-color -d 'No colour (also with NO_COLOR set or TERM=dumb)'
complete -c opampctl -n "__fish_opampctl_using_subcommand packages; and __fish_seen_subcommand_from list" -s h -l help -d 'Print help (see more with \'--help\')'
complete -c opampctl -n "__fish_opampctl_using_subcommand packages; and __fish_seen_subcommand_from show" -l server -d 'Base URL of opampd [default: http://127.0.0.1:8080]' -r
complete -c opampctl -n "__fish_opampctl_using_subcommand packages; and __fish_seen_subcommand_from show" -l token -d 'API token (an admin or operator token, or a login JWT)' -r
complete -c opampctl -n "__fish_opampctl_using_subcommand packages; and __fish_seen_subcommand_from show" -l token-file -d 'File holding the API token [default: ./data/admin.token, then /var/lib/opampd/admin.token, for a server on this host]' -r -F
complete -c opampctl -n "__fish_opampctl_using_subcommand packages; and __fish_seen_subcommand_from show" -l context -d 'Context of the config file to use (server and token file)' -r
complete -c opampctl -n "__fish_opampctl_using_subcommand packages; and __fish_seen_subcommand_from show" -s o -l output -d 'Output format' -r -f -a "table\t'Aligned columns for people'
wide\t'Like table, with more columns'
json\t'JSON: stable field names, for scripts'
yaml\t'YAML, same fields as JSON'"
complete -c opampctl -n "__fish_opampctl_using_subcommand packages; and __fish_seen_subcommand_from show" -l ca-file -d 'PEM file of a CA to trust for an https server (besides the built-in roots)' -r -F
complete -c opampctl -n "__fish_opampctl_using_subcommand packages; and __fish_seen_subcommand_from show" -l request-timeout -d 'Timeout of one request to the server, e.g. 10s' -r
complete -c opampctl -n "__fish_opampctl_using_subcommand packages; and __fish_seen_subcommand_from show" -s q -l quiet -d 'Print nothing on success: the exit code is the answer (errors still go to stderr)'
complete -c opampctl -n "__fish_opampctl_using_subcommand packages; and __fish_seen_subcommand_from show" -l no-color -d 'No colour (also with NO_COLOR set or TERM=dumb)'
complete -c opampctl -n "__fish_opampctl_using_subcommand packages; and __fish_seen_subcommand_from show" -s h -l help -d 'Print help (see more with \'--help\')'
complete -c opampctl -n "__fish_opampctl_using_subcommand packages; and __fish_seen_subcommand_from delete" -l server -d 'Base URL of opampd [default: http://127.0.0.1:8080]' -r
complete -c opampctl -n "__fish_opampctl_using_subcommand packages; and __fish_seen_subcommand_from delete" -l token -d 'API token (an admin or operator token, or a login JWT)' -r
complete -c opampctl -n "__fish_opampctl_using_subcommand packages; and __fish_seen_subcommand_from delete" -l token-file -d 'File holding the API token [default: ./data/admin.token, then /var/lib/opampd/admin.token, for a server on this host]' -r -F
complete -c opampctl -n "__fish_opampctl_using_subcommand packages; and __fish_seen_subcommand_from delete" -l context -d 'Context of the config file to use (server and token file)' -r
complete -c opampctl -n "__fish_opampctl_using_subcommand packages; and __fish_seen_subcommand_from delete" -s o -l output -d 'Output format' -r -f -a "table\t'Aligned columns for people'
wide\t'Like table, with more columns'
json\t'JSON: stable field names, for scripts'
yaml\t'YAML, same fields as JSON'"
complete -c opampctl -n "__fish_opampctl_using_subcommand packages; and __fish_seen_subcommand_from delete" -l ca-file -d 'PEM file of a CA to trust for an https server (besides the built-in roots)' -r -F
complete -c opampctl -n "__fish_opampctl_using_subcommand packages; and __fish_seen_subcommand_from delete" -l request-timeout -d 'Timeout of one request to the server, e.g. 10s' -r
complete -c opampctl -n "__fish_opampctl_using_subcommand packages; and __fish_seen_subcommand_from delete" -s q -l quiet -d 'Print nothing on success: the exit code is the answer (errors still go to stderr)'
complete -c opampctl -n "__fish_opampctl_using_subcommand packages; and __fish_seen_subcommand_from delete" -l no-color -d 'No colour (also with NO_COLOR set or TERM=dumb)'
complete -c opampctl -n "__fish_opampctl_using_subcommand packages; and __fish_seen_subcommand_from delete" -s h -l help -d 'Print help (see more with \'--help\')'
complete -c opampctl -n "__fish_opampctl_using_subcommand packages; and __fish_seen_subcommand_from rollout" -l server -d 'Base URL of opampd [default: http://127.0.0.1:8080]' -r
complete -c opampctl -n "__fish_opampctl_using_subcommand packages; and __fish_seen_subcommand_from rollout" -l token -d 'API token (an admin or operator token, or a login JWT)' -r
complete -c opampctl -n "__fish_opampctl_using_subcommand packages; and __fish_seen_subcommand_from rollout" -l token-file -d 'File holding the API token [default: ./data/admin.token, then /var/lib/opampd/admin.token, for a server on this host]' -r -F
complete -c opampctl -n "__fish_opampctl_using_subcommand packages; and __fish_seen_subcommand_from rollout" -l context -d 'Context of the config file to use (server and token file)' -r
complete -c opampctl -n "__fish_opampctl_using_subcommand packages; and __fish_seen_subcommand_from rollout" -s o -l output -d 'Output format' -r -f -a "table\t'Aligned columns for people'
wide\t'Like table, with more columns'
json\t'JSON: stable field names, for scripts'
yaml\t'YAML, same fields as JSON'"
complete -c opampctl -n "__fish_opampctl_using_subcommand packages; and __fish_seen_subcommand_from rollout" -l ca-file -d 'PEM file of a CA to trust for an https server (besides the built-in roots)' -r -F
complete -c opampctl -n "__fish_opampctl_using_subcommand packages; and __fish_seen_subcommand_from rollout" -l request-timeout -d 'Timeout of one request to the server, e.g. 10s' -r
complete -c opampctl -n "__fish_opampctl_using_subcommand packages; and __fish_seen_subcommand_from rollout" -s q -l quiet -d 'Print nothing on success: the exit code is the answer (errors still go to stderr)'
complete -c opampctl -n "__fish_opampctl_using_subcommand packages; and __fish_seen_subcommand_from rollout" -l no-color -d 'No colour (also with NO_COLOR set or TERM=dumb)'
complete -c opampctl -n "__fish_opampctl_using_subcommand packages; and __fish_seen_subcommand_from rollout" -s h -l help -d 'Print help (see more with \'--help\')'
complete -c opampctl -n "__fish_opampctl_using_subcommand packages; and __fish_seen_subcommand_from rollout" -f -a "start" -d 'Start rolling a package version out (the newest listed by default)'
complete -c opampctl -n "__fish_opampctl_using_subcommand packages; and __fish_seen_subcommand_from rollout" -f -a "status" -d 'Show a package rollout\'s progress and each agent\'s state; exit 0 when completed or running, 1 when paused'
complete -c opampctl -n "__fish_opampctl_using_subcommand packages; and __fish_seen_subcommand_from rollout" -f -a "pause" -d 'Pause a running package rollout'
complete -c opampctl -n "__fish_opampctl_using_subcommand packages; and __fish_seen_subcommand_from rollout" -f -a "resume" -d 'Resume a paused package rollout'
complete -c opampctl -n "__fish_opampctl_using_subcommand backup" -l dir -d 'Directory for the backup files (it must exist, unless --create-dir)' -r -F
complete -c opampctl -n "__fish_opampctl_using_subcommand backup" -l retention-days -d 'Delete backups in --dir older than N days, N at least 1 (only files named opamp_YYYYmmdd_HHMMSS.db.gz, .sql.gz or .packages.tar and their .sha256)' -r
complete -c opampctl -n "__fish_opampctl_using_subcommand backup" -l data-dir -d 'Back up the database file in this opampd data directory instead of asking the server' -r -F
complete -c opampctl -n "__fish_opampctl_using_subcommand backup" -l server -d 'Base URL of opampd [default: http://127.0.0.1:8080]' -r
complete -c opampctl -n "__fish_opampctl_using_subcommand backup" -l token -d 'API token (an admin or operator token, or a login JWT)' -r
complete -c opampctl -n "__fish_opampctl_using_subcommand backup" -l token-file -d 'File holding the API token [default: ./data/admin.token, then /var/lib/opampd/admin.token, for a server on this host]' -r -F
complete -c opampctl -n "__fish_opampctl_using_subcommand backup" -l context -d 'Context of the config file to use (server and token file)' -r
complete -c opampctl -n "__fish_opampctl_using_subcommand backup" -s o -l output -d 'Output format' -r -f -a "table\t'Aligned columns for people'
wide\t'Like table, with more columns'
json\t'JSON: stable field names, for scripts'
yaml\t'YAML, same fields as JSON'"
complete -c opampctl -n "__fish_opampctl_using_subcommand backup" -l ca-file -d 'PEM file of a CA to trust for an https server (besides the built-in roots)' -r -F
complete -c opampctl -n "__fish_opampctl_using_subcommand backup" -l request-timeout -d 'Timeout of one request to the server, e.g. 10s' -r
complete -c opampctl -n "__fish_opampctl_using_subcommand backup" -l create-dir -d 'Create --dir (and its parents) when it does not exist'
complete -c opampctl -n "__fish_opampctl_using_subcommand backup" -l verify -d 'Read the written file back: checksum, decompression, SQLite integrity and schema (a PostgreSQL dump: header, schema statements of its version unchanged, every table\'s block complete with its row count, end line); with --with-packages also every package file\'s SHA-256'
complete -c opampctl -n "__fish_opampctl_using_subcommand backup" -l with-packages -d 'Also back up the hosted package files the catalogue names, in opamp_YYYYmmdd_HHMMSS.packages.tar beside the database backup (with its .sha256); without it the catalogue is backed up but not the files\' bytes'
complete -c opampctl -n "__fish_opampctl_using_subcommand backup" -s q -l quiet -d 'Print nothing on success: the exit code is the answer (errors still go to stderr)'
complete -c opampctl -n "__fish_opampctl_using_subcommand backup" -l no-color -d 'No colour (also with NO_COLOR set or TERM=dumb)'
complete -c opampctl -n "__fish_opampctl_using_subcommand backup" -s h -l help -d 'Print help (see more with \'--help\')'
complete -c opampctl -n "__fish_opampctl_using_subcommand restore" -l data-dir -d 'Restore into this data directory of a stopped opampd instead of through the server' -r -F
complete -c opampctl -n "__fish_opampctl_using_subcommand restore" -l server -d 'Base URL of opampd [default: http://127.0.0.1:8080]' -r
complete -c opampctl -n "__fish_opampctl_using_subcommand restore" -l token -d 'API token (an admin or operator token, or a login JWT)' -r
complete -c opampctl -n "__fish_opampctl_using_subcommand restore" -l token-file -d 'File holding the API token [default: ./data/admin.token, then /var/lib/opampd/admin.token, for a server on this host]' -r -F
complete -c opampctl -n "__fish_opampctl_using_subcommand restore" -l context -d 'Context of the config file to use (server and token file)' -r
complete -c opampctl -n "__fish_opampctl_using_subcommand restore" -s o -l output -d 'Output format' -r -f -a "table\t'Aligned columns for people'
wide\t'Like table, with more columns'
json\t'JSON: stable field names, for scripts'
yaml\t'YAML, same fields as JSON'"
complete -c opampctl -n "__fish_opampctl_using_subcommand restore" -l ca-file -d 'PEM file of a CA to trust for an https server (besides the built-in roots)' -r -F
complete -c opampctl -n "__fish_opampctl_using_subcommand restore" -l request-timeout -d 'Timeout of one request to the server, e.g. 10s' -r
complete -c opampctl -n "__fish_opampctl_using_subcommand restore" -s y -l yes -d 'Do not ask for confirmation'
complete -c opampctl -n "__fish_opampctl_using_subcommand restore" -s q -l quiet -d 'Print nothing on success: the exit code is the answer (errors still go to stderr)'
complete -c opampctl -n "__fish_opampctl_using_subcommand restore" -l no-color -d 'No colour (also with NO_COLOR set or TERM=dumb)'
complete -c opampctl -n "__fish_opampctl_using_subcommand restore" -s h -l help -d 'Print help (see more with \'--help\')'
complete -c opampctl -n "__fish_opampctl_using_subcommand logs" -s n -l lines -d 'Number of recent lines' -r
complete -c opampctl -n "__fish_opampctl_using_subcommand logs" -l level -d 'Minimum level: error, warn, info, debug or trace' -r -f -a "error\t''
warn\t''
info\t''
debug\t''
trace\t''"
complete -c opampctl -n "__fish_opampctl_using_subcommand logs" -l grep -d 'Only lines containing this text' -r
complete -c opampctl -n "__fish_opampctl_using_subcommand logs" -l via -d 'Read the supervisor\'s log instead of the API stream' -r -f -a "journald\t'journalctl -u opampd'
compose\t'docker compose logs opamp-server'
kubernetes\t'kubectl logs -l app.kubernetes.io/name=opampd --all-containers (every pod)'"
complete -c opampctl -n "__fish_opampctl_using_subcommand logs" -l unit -d 'systemd unit name' -r
complete -c opampctl -n "__fish_opampctl_using_subcommand logs" -l compose-file -d 'docker compose file [default: compose\'s own lookup in the current directory]' -r -F
complete -c opampctl -n "__fish_opampctl_using_subcommand logs" -l namespace -d 'Kubernetes namespace' -r
complete -c opampctl -n "__fish_opampctl_using_subcommand logs" -l server -d 'Base URL of opampd [default: http://127.0.0.1:8080]' -r
complete -c opampctl -n "__fish_opampctl_using_subcommand logs" -l token -d 'API token (an admin or operator token, or a login JWT)' -r
complete -c opampctl -n "__fish_opampctl_using_subcommand logs" -l token-file -d 'File holding the API token [default: ./data/admin.token, then /var/lib/opampd/admin.token, for a server on this host]' -r -F
complete -c opampctl -n "__fish_opampctl_using_subcommand logs" -l context -d 'Context of the config file to use (server and token file)' -r
complete -c opampctl -n "__fish_opampctl_using_subcommand logs" -s o -l output -d 'Output format' -r -f -a "table\t'Aligned columns for people'
wide\t'Like table, with more columns'
json\t'JSON: stable field names, for scripts'
yaml\t'YAML, same fields as JSON'"
complete -c opampctl -n "__fish_opampctl_using_subcommand logs" -l ca-file -d 'PEM file of a CA to trust for an https server (besides the built-in roots)' -r -F
complete -c opampctl -n "__fish_opampctl_using_subcommand logs" -l request-timeout -d 'Timeout of one request to the server, e.g. 10s' -r
complete -c opampctl -n "__fish_opampctl_using_subcommand logs" -s f -l follow -d 'Keep printing new lines'
complete -c opampctl -n "__fish_opampctl_using_subcommand logs" -s q -l quiet -d 'Print nothing on success: the exit code is the answer (errors still go to stderr)'
complete -c opampctl -n "__fish_opampctl_using_subcommand logs" -l no-color -d 'No colour (also with NO_COLOR set or TERM=dumb)'
complete -c opampctl -n "__fish_opampctl_using_subcommand logs" -s h -l help -d 'Print help (see more with \'--help\')'
complete -c opampctl -n "__fish_opampctl_using_subcommand restart" -l via -d 'The supervisor that runs opampd' -r -f -a "systemd\t'systemctl restart opampd'
compose\t'docker compose restart opamp-server'
kubernetes\t'kubectl rollout restart deploy/opamp-server'"
complete -c opampctl -n "__fish_opampctl_using_subcommand restart" -l config -d 'Validate this opampd config file first (opampd check-config)' -r -F
complete -c opampctl -n "__fish_opampctl_using_subcommand restart" -l timeout -d 'How long to wait for ready and for the agents to come back' -r
complete -c opampctl -n "__fish_opampctl_using_subcommand restart" -l unit -d 'systemd unit name' -r
complete -c opampctl -n "__fish_opampctl_using_subcommand restart" -l compose-file -d 'docker compose file [default: compose\'s own lookup in the current directory]' -r -F
complete -c opampctl -n "__fish_opampctl_using_subcommand restart" -l namespace -d 'Kubernetes namespace' -r
complete -c opampctl -n "__fish_opampctl_using_subcommand restart" -l server -d 'Base URL of opampd [default: http://127.0.0.1:8080]' -r
complete -c opampctl -n "__fish_opampctl_using_subcommand restart" -l token -d 'API token (an admin or operator token, or a login JWT)' -r
complete -c opampctl -n "__fish_opampctl_using_subcommand restart" -l token-file -d 'File holding the API token [default: ./data/admin.token, then /var/lib/opampd/admin.token, for a server on this host]' -r -F
complete -c opampctl -n "__fish_opampctl_using_subcommand restart" -l context -d 'Context of the config file to use (server and token file)' -r
complete -c opampctl -n "__fish_opampctl_using_subcommand restart" -s o -l output -d 'Output format' -r -f -a "table\t'Aligned columns for people'
wide\t'Like table, with more columns'
json\t'JSON: stable field names, for scripts'
yaml\t'YAML, same fields as JSON'"
complete -c opampctl -n "__fish_opampctl_using_subcommand restart" -l ca-file -d 'PEM file of a CA to trust for an https server (besides the built-in roots)' -r -F
complete -c opampctl -n "__fish_opampctl_using_subcommand restart" -l request-timeout -d 'Timeout of one request to the server, e.g. 10s' -r
complete -c opampctl -n "__fish_opampctl_using_subcommand restart" -l dry-run -d 'Print the commands without running anything'
complete -c opampctl -n "__fish_opampctl_using_subcommand restart" -s q -l quiet -d 'Print nothing on success: the exit code is the answer (errors still go to stderr)'
complete -c opampctl -n "__fish_opampctl_using_subcommand restart" -l no-color -d 'No colour (also with NO_COLOR set or TERM=dumb)'
complete -c opampctl -n "__fish_opampctl_using_subcommand restart" -s h -l help -d 'Print help (see more with \'--help\')'
complete -c opampctl -n "__fish_opampctl_using_subcommand doctor" -l config -d 'opampd config file: validated (opampd check-config); gives the server address when no --server, OPAMPCTL_SERVER or context names one, and the data directory when no --data-dir does' -r -F
complete -c opampctl -n "__fish_opampctl_using_subcommand doctor" -l data-dir -d 'opampd data directory on this host: permissions, database (opened read-only), and its admin.token when no token is given [default: data_dir of --config]' -r -F
complete -c opampctl -n "__fish_opampctl_using_subcommand doctor" -l tls-cert -d 'TLS certificate file (PEM) to check [default: the server\'s, for an https URL]' -r -F
complete -c opampctl -n "__fish_opampctl_using_subcommand doctor" -l agent-secret -d 'An agent secret to test against the OpAMP endpoint' -r
complete -c opampctl -n "__fish_opampctl_using_subcommand doctor" -l opamp-path -d 'Path of the OpAMP endpoint [default: opamp.path of --config, else /v1/opamp]' -r
complete -c opampctl -n "__fish_opampctl_using_subcommand doctor" -l opamp-url -d 'OpAMP URL when agents use another listener, e.g. http://host:4320/v1/opamp [default: from agent_listen of --config]' -r
complete -c opampctl -n "__fish_opampctl_using_subcommand doctor" -l long-query-seconds -d 'On PostgreSQL: a statement or transaction running this long is reported (long-queries)' -r
complete -c opampctl -n "__fish_opampctl_using_subcommand doctor" -l server -d 'Base URL of opampd [default: http://127.0.0.1:8080]' -r
complete -c opampctl -n "__fish_opampctl_using_subcommand doctor" -l token -d 'API token (an admin or operator token, or a login JWT)' -r
complete -c opampctl -n "__fish_opampctl_using_subcommand doctor" -l token-file -d 'File holding the API token [default: ./data/admin.token, then /var/lib/opampd/admin.token, for a server on this host]' -r -F
complete -c opampctl -n "__fish_opampctl_using_subcommand doctor" -l context -d 'Context of the config file to use (server and token file)' -r
complete -c opampctl -n "__fish_opampctl_using_subcommand doctor" -s o -l output -d 'Output format' -r -f -a "table\t'Aligned columns for people'
wide\t'Like table, with more columns'
json\t'JSON: stable field names, for scripts'
yaml\t'YAML, same fields as JSON'"
complete -c opampctl -n "__fish_opampctl_using_subcommand doctor" -l ca-file -d 'PEM file of a CA to trust for an https server (besides the built-in roots)' -r -F
complete -c opampctl -n "__fish_opampctl_using_subcommand doctor" -l request-timeout -d 'Timeout of one request to the server, e.g. 10s' -r
complete -c opampctl -n "__fish_opampctl_using_subcommand doctor" -s q -l quiet -d 'Print nothing on success: the exit code is the answer (errors still go to stderr)'
complete -c opampctl -n "__fish_opampctl_using_subcommand doctor" -l no-color -d 'No colour (also with NO_COLOR set or TERM=dumb)'
complete -c opampctl -n "__fish_opampctl_using_subcommand doctor" -s h -l help -d 'Print help (see more with \'--help\')'
complete -c opampctl -n "__fish_opampctl_using_subcommand troubleshoot; and not __fish_seen_subcommand_from startup agent-connect db-pool memory" -l server -d 'Base URL of opampd [default: http://127.0.0.1:8080]' -r
complete -c opampctl -n "__fish_opampctl_using_subcommand troubleshoot; and not __fish_seen_subcommand_from startup agent-connect db-pool memory" -l token -d 'API token (an admin or operator token, or a login JWT)' -r
complete -c opampctl -n "__fish_opampctl_using_subcommand troubleshoot; and not __fish_seen_subcommand_from startup agent-connect db-pool memory" -l token-file -d 'File holding the API token [default: ./data/admin.token, then /var/lib/opampd/admin.token, for a server on this host]' -r -F
complete -c opampctl -n "__fish_opampctl_using_subcommand troubleshoot; and not __fish_seen_subcommand_from startup agent-connect db-pool memory" -l context -d 'Context of the config file to use (server and token file)' -r
complete -c opampctl -n "__fish_opampctl_using_subcommand troubleshoot; and not __fish_seen_subcommand_from startup agent-connect db-pool memory" -s o -l output -d 'Output format' -r -f -a "table\t'Aligned columns for people'
wide\t'Like table, with more columns'
json\t'JSON: stable field names, for scripts'
yaml\t'YAML, same fields as JSON'"
complete -c opampctl -n "__fish_opampctl_using_subcommand troubleshoot; and not __fish_seen_subcommand_from startup agent-connect db-pool memory" -l ca-file -d 'PEM file of a CA to trust for an https server (besides the built-in roots)' -r -F
complete -c opampctl -n "__fish_opampctl_using_subcommand troubleshoot; and not __fish_seen_subcommand_from startup agent-connect db-pool memory" -l request-timeout -d 'Timeout of one request to the server, e.g. 10s' -r
complete -c opampctl -n "__fish_opampctl_using_subcommand troubleshoot; and not __fish_seen_subcommand_from startup agent-connect db-pool memory" -s q -l quiet -d 'Print nothing on success: the exit code is the answer (errors still go to stderr)'
complete -c opampctl -n "__fish_opampctl_using_subcommand troubleshoot; and not __fish_seen_subcommand_from startup agent-connect db-pool memory" -l no-color -d 'No colour (also with NO_COLOR set or TERM=dumb)'
complete -c opampctl -n "__fish_opampctl_using_subcommand troubleshoot; and not __fish_seen_subcommand_from startup agent-connect db-pool memory" -s h -l help -d 'Print help (see more with \'--help\')'
complete -c opampctl -n "__fish_opampctl_using_subcommand troubleshoot; and not __fish_seen_subcommand_from startup agent-connect db-pool memory" -f -a "startup" -d 'opampd does not start: config, data directory, database, port'
complete -c opampctl -n "__fish_opampctl_using_subcommand troubleshoot; and not __fish_seen_subcommand_from startup agent-connect db-pool memory" -f -a "agent-connect" -d 'Agents do not connect: OpAMP over HTTP and WebSocket, TLS, agent secret'
complete -c opampctl -n "__fish_opampctl_using_subcommand troubleshoot; and not __fish_seen_subcommand_from startup agent-connect db-pool memory" -f -a "db-pool" -d 'Slow API or waits on the database: read pool, slow queries, database size'
complete -c opampctl -n "__fish_opampctl_using_subcommand troubleshoot; and not __fish_seen_subcommand_from startup agent-connect db-pool memory" -f -a "memory" -d 'Memory grows: RSS trend and the subsystems that hold memory'
complete -c opampctl -n "__fish_opampctl_using_subcommand troubleshoot; and __fish_seen_subcommand_from startup" -l config -d 'opampd config file: validated (opampd check-config); gives the server address when no --server, OPAMPCTL_SERVER or context names one, and the data directory when no --data-dir does' -r -F
complete -c opampctl -n "__fish_opampctl_using_subcommand troubleshoot; and __fish_seen_subcommand_from startup" -l data-dir -d 'opampd data directory on this host: permissions, database (opened read-only), and its admin.token when no token is given [default: data_dir of --config]' -r -F
complete -c opampctl -n "__fish_opampctl_using_subcommand troubleshoot; and __fish_seen_subcommand_from startup" -l tls-cert -d 'TLS certificate file (PEM) to check [default: the server\'s, for an https URL]' -r -F
complete -c opampctl -n "__fish_opampctl_using_subcommand troubleshoot; and __fish_seen_subcommand_from startup" -l agent-secret -d 'An agent secret to test against the OpAMP endpoint' -r
complete -c opampctl -n "__fish_opampctl_using_subcommand troubleshoot; and __fish_seen_subcommand_from startup" -l opamp-path -d 'Path of the OpAMP endpoint [default: opamp.path of --config, else /v1/opamp]' -r
complete -c opampctl -n "__fish_opampctl_using_subcommand troubleshoot; and __fish_seen_subcommand_from startup" -l opamp-url -d 'OpAMP URL when agents use another listener, e.g. http://host:4320/v1/opamp [default: from agent_listen of --config]' -r
complete -c opampctl -n "__fish_opampctl_using_subcommand troubleshoot; and __fish_seen_subcommand_from startup" -l long-query-seconds -d 'On PostgreSQL: a statement or transaction running this long is reported (long-queries)' -r
complete -c opampctl -n "__fish_opampctl_using_subcommand troubleshoot; and __fish_seen_subcommand_from startup" -l server -d 'Base URL of opampd [default: http://127.0.0.1:8080]' -r
complete -c opampctl -n "__fish_opampctl_using_subcommand troubleshoot; and __fish_seen_subcommand_from startup" -l token -d 'API token (an admin or operator token, or a login JWT)' -r
complete -c opampctl -n "__fish_opampctl_using_subcommand troubleshoot; and __fish_seen_subcommand_from startup" -l token-file -d 'File holding the API token [default: ./data/admin.token, then /var/lib/opampd/admin.token, for a server on this host]' -r -F
complete -c opampctl -n "__fish_opampctl_using_subcommand troubleshoot; and __fish_seen_subcommand_from startup" -l context -d 'Context of the config file to use (server and token file)' -r
complete -c opampctl -n "__fish_opampctl_using_subcommand troubleshoot; and __fish_seen_subcommand_from startup" -s o -l output -d 'Output format' -r -f -a "table\t'Aligned columns for people'
wide\t'Like table, with more columns'
json\t'JSON: stable field names, for scripts'
yaml\t'YAML, same fields as JSON'"
complete -c opampctl -n "__fish_opampctl_using_subcommand troubleshoot; and __fish_seen_subcommand_from startup" -l ca-file -d 'PEM file of a CA to trust for an https server (besides the built-in roots)' -r -F
complete -c opampctl -n "__fish_opampctl_using_subcommand troubleshoot; and __fish_seen_subcommand_from startup" -l request-timeout -d 'Timeout of one request to the server, e.g. 10s' -r
complete -c opampctl -n "__fish_opampctl_using_subcommand troubleshoot; and __fish_seen_subcommand_from startup" -s q -l quiet -d 'Print nothing on success: the exit code is the answer (errors still go to stderr)'
complete -c opampctl -n "__fish_opampctl_using_subcommand troubleshoot; and __fish_seen_subcommand_from startup" -l no-color -d 'No colour (also with NO_COLOR set or TERM=dumb)'
complete -c opampctl -n "__fish_opampctl_using_subcommand troubleshoot; and __fish_seen_subcommand_from startup" -s h -l help -d 'Print help (see more with \'--help\')'
complete -c opampctl -n "__fish_opampctl_using_subcommand troubleshoot; and __fish_seen_subcommand_from agent-connect" -l config -d 'opampd config file: validated (opampd check-config); gives the server address when no --server, OPAMPCTL_SERVER or context names one, and the data directory when no --data-dir does' -r -F
complete -c opampctl -n "__fish_opampctl_using_subcommand troubleshoot; and __fish_seen_subcommand_from agent-connect" -l data-dir -d 'opampd data directory on this host: permissions, database (opened read-only), and its admin.token when no token is given [default: data_dir of --config]' -r -F
complete -c opampctl -n "__fish_opampctl_using_subcommand troubleshoot; and __fish_seen_subcommand_from agent-connect" -l tls-cert -d 'TLS certificate file (PEM) to check [default: the server\'s, for an https URL]' -r -F
complete -c opampctl -n "__fish_opampctl_using_subcommand troubleshoot; and __fish_seen_subcommand_from agent-connect" -l agent-secret -d 'An agent secret to test against the OpAMP endpoint' -r
complete -c opampctl -n "__fish_opampctl_using_subcommand troubleshoot; and __fish_seen_subcommand_from agent-connect" -l opamp-path -d 'Path of the OpAMP endpoint [default: opamp.path of --config, else /v1/opamp]' -r
complete -c opampctl -n "__fish_opampctl_using_subcommand troubleshoot; and __fish_seen_subcommand_from agent-connect" -l opamp-url -d 'OpAMP URL when agents use another listener, e.g. http://host:4320/v1/opamp [default: from agent_listen of --config]' -r
complete -c opampctl -n "__fish_opampctl_using_subcommand troubleshoot; and __fish_seen_subcommand_from agent-connect" -l long-query-seconds -d 'On PostgreSQL: a statement or transaction running this long is reported (long-queries)' -r
complete -c opampctl -n "__fish_opampctl_using_subcommand troubleshoot; and __fish_seen_subcommand_from agent-connect" -l server -d 'Base URL of opampd [default: http://127.0.0.1:8080]' -r
complete -c opampctl -n "__fish_opampctl_using_subcommand troubleshoot; and __fish_seen_subcommand_from agent-connect" -l token -d 'API token (an admin or operator token, or a login JWT)' -r
complete -c opampctl -n "__fish_opampctl_using_subcommand troubleshoot; and __fish_seen_subcommand_from agent-connect" -l token-file -d 'File holding the API token [default: ./data/admin.token, then /var/lib/opampd/admin.token, for a server on this host]' -r -F
complete -c opampctl -n "__fish_opampctl_using_subcommand troubleshoot; and __fish_seen_subcommand_from agent-connect" -l context -d 'Context of the config file to use (server and token file)' -r
complete -c opampctl -n "__fish_opampctl_using_subcommand troubleshoot; and __fish_seen_subcommand_from agent-connect" -s o -l output -d 'Output format' -r -f -a "table\t'Aligned columns for people'
wide\t'Like table, with more columns'
json\t'JSON: stable field names, for scripts'
yaml\t'YAML, same fields as JSON'"
complete -c opampctl -n "__fish_opampctl_using_subcommand troubleshoot; and __fish_seen_subcommand_from agent-connect" -l ca-file -d 'PEM file of a CA to trust for an https server (besides the built-in roots)' -r -F
complete -c opampctl -n "__fish_opampctl_using_subcommand troubleshoot; and __fish_seen_subcommand_from agent-connect" -l request-timeout -d 'Timeout of one request to the server, e.g. 10s' -r
complete -c opampctl -n "__fish_opampctl_using_subcommand troubleshoot; and __fish_seen_subcommand_from agent-connect" -s q -l quiet -d 'Print nothing on success: the exit code is the answer (errors still go to stderr)'
complete -c opampctl -n "__fish_opampctl_using_subcommand troubleshoot; and __fish_seen_subcommand_from agent-connect" -l no-color -d 'No colour (also with NO_COLOR set or TERM=dumb)'
complete -c opampctl -n "__fish_opampctl_using_subcommand troubleshoot; and __fish_seen_subcommand_from agent-connect" -s h -l help -d 'Print help (see more with \'--help\')'
complete -c opampctl -n "__fish_opampctl_using_subcommand troubleshoot; and __fish_seen_subcommand_from db-pool" -l config -d 'opampd config file: validated (opampd check-config); gives the server address when no --server, OPAMPCTL_SERVER or context names one, and the data directory when no --data-dir does' -r -F
complete -c opampctl -n "__fish_opampctl_using_subcommand troubleshoot; and __fish_seen_subcommand_from db-pool" -l data-dir -d 'opampd data directory on this host: permissions, database (opened read-only), and its admin.token when no token is given [default: data_dir of --config]' -r -F
complete -c opampctl -n "__fish_opampctl_using_subcommand troubleshoot; and __fish_seen_subcommand_from db-pool" -l tls-cert -d 'TLS certificate file (PEM) to check [default: the server\'s, for an https URL]' -r -F
complete -c opampctl -n "__fish_opampctl_using_subcommand troubleshoot; and __fish_seen_subcommand_from db-pool" -l agent-secret -d 'An agent secret to test against the OpAMP endpoint' -r
complete -c opampctl -n "__fish_opampctl_using_subcommand troubleshoot; and __fish_seen_subcommand_from db-pool" -l opamp-path -d 'Path of the OpAMP endpoint [default: opamp.path of --config, else /v1/opamp]' -r
complete -c opampctl -n "__fish_opampctl_using_subcommand troubleshoot; and __fish_seen_subcommand_from db-pool" -l opamp-url -d 'OpAMP URL when agents use another listener, e.g. http://host:4320/v1/opamp [default: from agent_listen of --config]' -r
complete -c opampctl -n "__fish_opampctl_using_subcommand troubleshoot; and __fish_seen_subcommand_from db-pool" -l long-query-seconds -d 'On PostgreSQL: a statement or transaction running this long is reported (long-queries)' -r
complete -c opampctl -n "__fish_opampctl_using_subcommand troubleshoot; and __fish_seen_subcommand_from db-pool" -l server -d 'Base URL of opampd [default: http://127.0.0.1:8080]' -r
complete -c opampctl -n "__fish_opampctl_using_subcommand troubleshoot; and __fish_seen_subcommand_from db-pool" -l token -d 'API token (an admin or operator token, or a login JWT)' -r
complete -c opampctl -n "__fish_opampctl_using_subcommand troubleshoot; and __fish_seen_subcommand_from db-pool" -l token-file -d 'File holding the API token [default: ./data/admin.token, then /var/lib/opampd/admin.token, for a server on this host]' -r -F
complete -c opampctl -n "__fish_opampctl_using_subcommand troubleshoot; and __fish_seen_subcommand_from db-pool" -l context -d 'Context of the config file to use (server and token file)' -r
complete -c opampctl -n "__fish_opampctl_using_subcommand troubleshoot; and __fish_seen_subcommand_from db-pool" -s o -l output -d 'Output format' -r -f -a "table\t'Aligned columns for people'
wide\t'Like table, with more columns'
json\t'JSON: stable field names, for scripts'
yaml\t'YAML, same fields as JSON'"
complete -c opampctl -n "__fish_opampctl_using_subcommand troubleshoot; and __fish_seen_subcommand_from db-pool" -l ca-file -d 'PEM file of a CA to trust for an https server (besides the built-in roots)' -r -F
complete -c opampctl -n "__fish_opampctl_using_subcommand troubleshoot; and __fish_seen_subcommand_from db-pool" -l request-timeout -d 'Timeout of one request to the server, e.g. 10s' -r
complete -c opampctl -n "__fish_opampctl_using_subcommand troubleshoot; and __fish_seen_subcommand_from db-pool" -s q -l quiet -d 'Print nothing on success: the exit code is the answer (errors still go to stderr)'
complete -c opampctl -n "__fish_opampctl_using_subcommand troubleshoot; and __fish_seen_subcommand_from db-pool" -l no-color -d 'No colour (also with NO_COLOR set or TERM=dumb)'
complete -c opampctl -n "__fish_opampctl_using_subcommand troubleshoot; and __fish_seen_subcommand_from db-pool" -s h -l help -d 'Print help (see more with \'--help\')'
complete -c opampctl -n "__fish_opampctl_using_subcommand troubleshoot; and __fish_seen_subcommand_from memory" -l samples -d 'Number of samples' -r
complete -c opampctl -n "__fish_opampctl_using_subcommand troubleshoot; and __fish_seen_subcommand_from memory" -l duration -d 'Time over which the samples are spread' -r
complete -c opampctl -n "__fish_opampctl_using_subcommand troubleshoot; and __fish_seen_subcommand_from memory" -l server -d 'Base URL of opampd [default: http://127.0.0.1:8080]' -r
complete -c opampctl -n "__fish_opampctl_using_subcommand troubleshoot; and __fish_seen_subcommand_from memory" -l token -d 'API token (an admin or operator token, or a login JWT)' -r
complete -c opampctl -n "__fish_opampctl_using_subcommand troubleshoot; and __fish_seen_subcommand_from memory" -l token-file -d 'File holding the API token [default: ./data/admin.token, then /var/lib/opampd/admin.token, for a server on this host]' -r -F
complete -c opampctl -n "__fish_opampctl_using_subcommand troubleshoot; and __fish_seen_subcommand_from memory" -l context -d 'Context of the config file to use (server and token file)' -r
complete -c opampctl -n "__fish_opampctl_using_subcommand troubleshoot; and __fish_seen_subcommand_from memory" -s o -l output -d 'Output format' -r -f -a "table\t'Aligned columns for people'
wide\t'Like table, with more columns'
json\t'JSON: stable field names, for scripts'
yaml\t'YAML, same fields as JSON'"
complete -c opampctl -n "__fish_opampctl_using_subcommand troubleshoot; and __fish_seen_subcommand_from memory" -l ca-file -d 'PEM file of a CA to trust for an https server (besides the built-in roots)' -r -F
complete -c opampctl -n "__fish_opampctl_using_subcommand troubleshoot; and __fish_seen_subcommand_from memory" -l request-timeout -d 'Timeout of one request to the server, e.g. 10s' -r
complete -c opampctl -n "__fish_opampctl_using_subcommand troubleshoot; and __fish_seen_subcommand_from memory" -s q -l quiet -d 'Print nothing on success: the exit code is the answer (errors still go to stderr)'
complete -c opampctl -n "__fish_opampctl_using_subcommand troubleshoot; and __fish_seen_subcommand_from memory" -l no-color -d 'No colour (also with NO_COLOR set or TERM=dumb)'
complete -c opampctl -n "__fish_opampctl_using_subcommand troubleshoot; and __fish_seen_subcommand_from memory" -s h -l help -d 'Print help (see more with \'--help\')'
complete -c opampctl -n "__fish_opampctl_using_subcommand db; and not __fish_seen_subcommand_from stats optimize migrate" -l server -d 'Base URL of opampd [default: http://127.0.0.1:8080]' -r
complete -c opampctl -n "__fish_opampctl_using_subcommand db; and not __fish_seen_subcommand_from stats optimize migrate" -l token -d 'API token (an admin or operator token, or a login JWT)' -r
complete -c opampctl -n "__fish_opampctl_using_subcommand db; and not __fish_seen_subcommand_from stats optimize migrate" -l token-file -d 'File holding the API token [default: ./data/admin.token, then /var/lib/opampd/admin.token, for a server on this host]' -r -F
complete -c opampctl -n "__fish_opampctl_using_subcommand db; and not __fish_seen_subcommand_from stats optimize migrate" -l context -d 'Context of the config file to use (server and token file)' -r
complete -c opampctl -n "__fish_opampctl_using_subcommand db; and not __fish_seen_subcommand_from stats optimize migrate" -s o -l output -d 'Output format' -r -f -a "table\t'Aligned columns for people'
wide\t'Like table, with more columns'
json\t'JSON: stable field names, for scripts'
yaml\t'YAML, same fields as JSON'"
complete -c opampctl -n "__fish_opampctl_using_subcommand db; and not __fish_seen_subcommand_from stats optimize migrate" -l ca-file -d 'PEM file of a CA to trust for an https server (besides the built-in roots)' -r -F
complete -c opampctl -n "__fish_opampctl_using_subcommand db; and not __fish_seen_subcommand_from stats optimize migrate" -l request-timeout -d 'Timeout of one request to the server, e.g. 10s' -r
complete -c opampctl -n "__fish_opampctl_using_subcommand db; and not __fish_seen_subcommand_from stats optimize migrate" -s q -l quiet -d 'Print nothing on success: the exit code is the answer (errors still go to stderr)'
complete -c opampctl -n "__fish_opampctl_using_subcommand db; and not __fish_seen_subcommand_from stats optimize migrate" -l no-color -d 'No colour (also with NO_COLOR set or TERM=dumb)'
complete -c opampctl -n "__fish_opampctl_using_subcommand db; and not __fish_seen_subcommand_from stats optimize migrate" -s h -l help -d 'Print help (see more with \'--help\')'
complete -c opampctl -n "__fish_opampctl_using_subcommand db; and not __fish_seen_subcommand_from stats optimize migrate" -f -a "stats" -d 'Size, pages, WAL and rows per table; on PostgreSQL table sizes, dead rows, the pool, connections and running statements'
complete -c opampctl -n "__fish_opampctl_using_subcommand db; and not __fish_seen_subcommand_from stats optimize migrate" -f -a "optimize" -d 'ANALYZE, PRAGMA optimize, VACUUM and a WAL checkpoint (through the server); on PostgreSQL VACUUM (ANALYZE) of every table'
complete -c opampctl -n "__fish_opampctl_using_subcommand db; and not __fish_seen_subcommand_from stats optimize migrate" -f -a "migrate" -d 'Move a stopped SQLite deployment into an empty PostgreSQL database, every row checked'
complete -c opampctl -n "__fish_opampctl_using_subcommand db; and __fish_seen_subcommand_from stats" -l data-dir -d 'Read the database file in this data directory (read-only) instead of asking the server' -r -F
complete -c opampctl -n "__fish_opampctl_using_subcommand db; and __fish_seen_subcommand_from stats" -l server -d 'Base URL of opampd [default: http://127.0.0.1:8080]' -r
complete -c opampctl -n "__fish_opampctl_using_subcommand db; and __fish_seen_subcommand_from stats" -l token -d 'API token (an admin or operator token, or a login JWT)' -r
complete -c opampctl -n "__fish_opampctl_using_subcommand db; and __fish_seen_subcommand_from stats" -l token-file -d 'File holding the API token [default: ./data/admin.token, then /var/lib/opampd/admin.token, for a server on this host]' -r -F
complete -c opampctl -n "__fish_opampctl_using_subcommand db; and __fish_seen_subcommand_from stats" -l context -d 'Context of the config file to use (server and token file)' -r
complete -c opampctl -n "__fish_opampctl_using_subcommand db; and __fish_seen_subcommand_from stats" -s o -l output -d 'Output format' -r -f -a "table\t'Aligned columns for people'
wide\t'Like table, with more columns'
json\t'JSON: stable field names, for scripts'
yaml\t'YAML, same fields as JSON'"
complete -c opampctl -n "__fish_opampctl_using_subcommand db; and __fish_seen_subcommand_from stats" -l ca-file -d 'PEM file of a CA to trust for an https server (besides the built-in roots)' -r -F
complete -c opampctl -n "__fish_opampctl_using_subcommand db; and __fish_seen_subcommand_from stats" -l request-timeout -d 'Timeout of one request to the server, e.g. 10s' -r
complete -c opampctl -n "__fish_opampctl_using_subcommand db; and __fish_seen_subcommand_from stats" -l integrity -d 'Also run PRAGMA integrity_check (slow on large databases)'
complete -c opampctl -n "__fish_opampctl_using_subcommand db; and __fish_seen_subcommand_from stats" -s q -l quiet -d 'Print nothing on success: the exit code is the answer (errors still go to stderr)'
complete -c opampctl -n "__fish_opampctl_using_subcommand db; and __fish_seen_subcommand_from stats" -l no-color -d 'No colour (also with NO_COLOR set or TERM=dumb)'
complete -c opampctl -n "__fish_opampctl_using_subcommand db; and __fish_seen_subcommand_from stats" -s h -l help -d 'Print help (see more with \'--help\')'
complete -c opampctl -n "__fish_opampctl_using_subcommand db; and __fish_seen_subcommand_from optimize" -l server -d 'Base URL of opampd [default: http://127.0.0.1:8080]' -r
complete -c opampctl -n "__fish_opampctl_using_subcommand db; and __fish_seen_subcommand_from optimize" -l token -d 'API token (an admin or operator token, or a login JWT)' -r
complete -c opampctl -n "__fish_opampctl_using_subcommand db; and __fish_seen_subcommand_from optimize" -l token-file -d 'File holding the API token [default: ./data/admin.token, then /var/lib/opampd/admin.token, for a server on this host]' -r -F
complete -c opampctl -n "__fish_opampctl_using_subcommand db; and __fish_seen_subcommand_from optimize" -l context -d 'Context of the config file to use (server and token file)' -r
complete -c opampctl -n "__fish_opampctl_using_subcommand db; and __fish_seen_subcommand_from optimize" -s o -l output -d 'Output format' -r -f -a "table\t'Aligned columns for people'
wide\t'Like table, with more columns'
json\t'JSON: stable field names, for scripts'
yaml\t'YAML, same fields as JSON'"
complete -c opampctl -n "__fish_opampctl_using_subcommand db; and __fish_seen_subcommand_from optimize" -l ca-file -d 'PEM file of a CA to trust for an https server (besides the built-in roots)' -r -F
complete -c opampctl -n "__fish_opampctl_using_subcommand db; and __fish_seen_subcommand_from optimize" -l request-timeout -d 'Timeout of one request to the server, e.g. 10s' -r
complete -c opampctl -n "__fish_opampctl_using_subcommand db; and __fish_seen_subcommand_from optimize" -s q -l quiet -d 'Print nothing on success: the exit code is the answer (errors still go to stderr)'
complete -c opampctl -n "__fish_opampctl_using_subcommand db; and __fish_seen_subcommand_from optimize" -l no-color -d 'No colour (also with NO_COLOR set or TERM=dumb)'
complete -c opampctl -n "__fish_opampctl_using_subcommand db; and __fish_seen_subcommand_from optimize" -s h -l help -d 'Print help (see more with \'--help\')'
complete -c opampctl -n "__fish_opampctl_using_subcommand db; and __fish_seen_subcommand_from migrate" -l from-sqlite -d 'Data directory of the stopped SQLite opampd (the one holding opamp.db)' -r -F
complete -c opampctl -n "__fish_opampctl_using_subcommand db; and __fish_seen_subcommand_from migrate" -l to -d 'The PostgreSQL database: postgres://USER:PASSWORD@HOST:PORT/DATABASE' -r
complete -c opampctl -n "__fish_opampctl_using_subcommand db; and __fish_seen_subcommand_from migrate" -l server -d 'Base URL of opampd [default: http://127.0.0.1:8080]' -r
complete -c opampctl -n "__fish_opampctl_using_subcommand db; and __fish_seen_subcommand_from migrate" -l token -d 'API token (an admin or operator token, or a login JWT)' -r
complete -c opampctl -n "__fish_opampctl_using_subcommand db; and __fish_seen_subcommand_from migrate" -l token-file -d 'File holding the API token [default: ./data/admin.token, then /var/lib/opampd/admin.token, for a server on this host]' -r -F
complete -c opampctl -n "__fish_opampctl_using_subcommand db; and __fish_seen_subcommand_from migrate" -l context -d 'Context of the config file to use (server and token file)' -r
complete -c opampctl -n "__fish_opampctl_using_subcommand db; and __fish_seen_subcommand_from migrate" -s o -l output -d 'Output format' -r -f -a "table\t'Aligned columns for people'
wide\t'Like table, with more columns'
json\t'JSON: stable field names, for scripts'
yaml\t'YAML, same fields as JSON'"
complete -c opampctl -n "__fish_opampctl_using_subcommand db; and __fish_seen_subcommand_from migrate" -l ca-file -d 'PEM file of a CA to trust for an https server (besides the built-in roots)' -r -F
complete -c opampctl -n "__fish_opampctl_using_subcommand db; and __fish_seen_subcommand_from migrate" -l request-timeout -d 'Timeout of one request to the server, e.g. 10s' -r
complete -c opampctl -n "__fish_opampctl_using_subcommand db; and __fish_seen_subcommand_from migrate" -l replace -d 'Replace the content of a database that already holds opampd rows'
complete -c opampctl -n "__fish_opampctl_using_subcommand db; and __fish_seen_subcommand_from migrate" -s q -l quiet -d 'Print nothing on success: the exit code is the answer (errors still go to stderr)'
complete -c opampctl -n "__fish_opampctl_using_subcommand db; and __fish_seen_subcommand_from migrate" -l no-color -d 'No colour (also with NO_COLOR set or TERM=dumb)'
complete -c opampctl -n "__fish_opampctl_using_subcommand db; and __fish_seen_subcommand_from migrate" -s h -l help -d 'Print help (see more with \'--help\')'
complete -c opampctl -n "__fish_opampctl_using_subcommand audit" -l actor -d 'Only entries by this actor (user name, or token:NAME)' -r
complete -c opampctl -n "__fish_opampctl_using_subcommand audit" -l action -d 'Only entries of this action (login, config.apply, agent.delete, user.create, …)' -r
complete -c opampctl -n "__fish_opampctl_using_subcommand audit" -l since -d 'Only entries at or after this time: RFC 3339 (2026-01-31T12:00:00Z) or an age (30m, 2h, 7d)' -r
complete -c opampctl -n "__fish_opampctl_using_subcommand audit" -l limit -d 'At most this many entries, newest first (1-1000)' -r
complete -c opampctl -n "__fish_opampctl_using_subcommand audit" -l interval -d 'How often -f polls' -r
complete -c opampctl -n "__fish_opampctl_using_subcommand audit" -l server -d 'Base URL of opampd [default: http://127.0.0.1:8080]' -r
complete -c opampctl -n "__fish_opampctl_using_subcommand audit" -l token -d 'API token (an admin or operator token, or a login JWT)' -r
complete -c opampctl -n "__fish_opampctl_using_subcommand audit" -l token-file -d 'File holding the API token [default: ./data/admin.token, then /var/lib/opampd/admin.token, for a server on this host]' -r -F
complete -c opampctl -n "__fish_opampctl_using_subcommand audit" -l context -d 'Context of the config file to use (server and token file)' -r
complete -c opampctl -n "__fish_opampctl_using_subcommand audit" -s o -l output -d 'Output format' -r -f -a "table\t'Aligned columns for people'
wide\t'Like table, with more columns'
json\t'JSON: stable field names, for scripts'
yaml\t'YAML, same fields as JSON'"
complete -c opampctl -n "__fish_opampctl_using_subcommand audit" -l ca-file -d 'PEM file of a CA to trust for an https server (besides the built-in roots)' -r -F
complete -c opampctl -n "__fish_opampctl_using_subcommand audit" -l request-timeout -d 'Timeout of one request to the server, e.g. 10s' -r
complete -c opampctl -n "__fish_opampctl_using_subcommand audit" -s f -l follow -d 'Keep printing new entries as they are recorded (polls every --interval; Ctrl-C stops)'
complete -c opampctl -n "__fish_opampctl_using_subcommand audit" -s q -l quiet -d 'Print nothing on success: the exit code is the answer (errors still go to stderr)'
complete -c opampctl -n "__fish_opampctl_using_subcommand audit" -l no-color -d 'No colour (also with NO_COLOR set or TERM=dumb)'
complete -c opampctl -n "__fish_opampctl_using_subcommand audit" -s h -l help -d 'Print help (see more with \'--help\')'
complete -c opampctl -n "__fish_opampctl_using_subcommand users; and not __fish_seen_subcommand_from list create set-role set-password delete" -l server -d 'Base URL of opampd [default: http://127.0.0.1:8080]' -r
complete -c opampctl -n "__fish_opampctl_using_subcommand users; and not __fish_seen_subcommand_from list create set-role set-password delete" -l token -d 'API token (an admin or operator token, or a login JWT)' -r
complete -c opampctl -n "__fish_opampctl_using_subcommand users; and not __fish_seen_subcommand_from list create set-role set-password delete" -l token-file -d 'File holding the API token [default: ./data/admin.token, then /var/lib/opampd/admin.token, for a server on this host]' -r -F
complete -c opampctl -n "__fish_opampctl_using_subcommand users; and not __fish_seen_subcommand_from list create set-role set-password delete" -l context -d 'Context of the config file to use (server and token file)' -r
complete -c opampctl -n "__fish_opampctl_using_subcommand users; and not __fish_seen_subcommand_from list create set-role set-password delete" -s o -l output -d 'Output format' -r -f -a "table\t'Aligned columns for people'
wide\t'Like table, with more columns'
json\t'JSON: stable field names, for scripts'
yaml\t'YAML, same fields as JSON'"
complete -c opampctl -n "__fish_opampctl_using_subcommand users; and not __fish_seen_subcommand_from list create set-role set-password delete" -l ca-file -d 'PEM file of a CA to trust for an https server (besides the built-in roots)' -r -F
complete -c opampctl -n "__fish_opampctl_using_subcommand users; and not __fish_seen_subcommand_from list create set-role set-password delete" -l request-timeout -d 'Timeout of one request to the server, e.g. 10s' -r
complete -c opampctl -n "__fish_opampctl_using_subcommand users; and not __fish_seen_subcommand_from list create set-role set-password delete" -s q -l quiet -d 'Print nothing on success: the exit code is the answer (errors still go to stderr)'
complete -c opampctl -n "__fish_opampctl_using_subcommand users; and not __fish_seen_subcommand_from list create set-role set-password delete" -l no-color -d 'No colour (also with NO_COLOR set or TERM=dumb)'
complete -c opampctl -n "__fish_opampctl_using_subcommand users; and not __fish_seen_subcommand_from list create set-role set-password delete" -s h -l help -d 'Print help (see more with \'--help\')'
complete -c opampctl -n "__fish_opampctl_using_subcommand users; and not __fish_seen_subcommand_from list create set-role set-password delete" -f -a "list" -d 'List the users and their roles'
complete -c opampctl -n "__fish_opampctl_using_subcommand users; and not __fish_seen_subcommand_from list create set-role set-password delete" -f -a "create" -d 'Create a user; the password is read from stdin (--password-stdin)'
complete -c opampctl -n "__fish_opampctl_using_subcommand users; and not __fish_seen_subcommand_from list create set-role set-password delete" -f -a "set-role" -d 'Change a user\'s role (their tokens above it are lowered to it)'
complete -c opampctl -n "__fish_opampctl_using_subcommand users; and not __fish_seen_subcommand_from list create set-role set-password delete" -f -a "set-password" -d 'Set a user\'s password, read from stdin (--password-stdin)'
complete -c opampctl -n "__fish_opampctl_using_subcommand users; and not __fish_seen_subcommand_from list create set-role set-password delete" -f -a "delete" -d 'Delete a user and revoke their tokens'
complete -c opampctl -n "__fish_opampctl_using_subcommand users; and __fish_seen_subcommand_from list" -l server -d 'Base URL of opampd [default: http://127.0.0.1:8080]' -r
complete -c opampctl -n "__fish_opampctl_using_subcommand users; and __fish_seen_subcommand_from list" -l token -d 'API token (an admin or operator token, or a login JWT)' -r
complete -c opampctl -n "__fish_opampctl_using_subcommand users; and __fish_seen_subcommand_from list" -l token-file -d 'File holding the API token [default: ./data/admin.token, then /var/lib/opampd/admin.token, for a server on this host]' -r -F
complete -c opampctl -n "__fish_opampctl_using_subcommand users; and __fish_seen_subcommand_from list" -l context -d 'Context of the config file to use (server and token file)' -r
complete -c opampctl -n "__fish_opampctl_using_subcommand users; and __fish_seen_subcommand_from list" -s o -l output -d 'Output format' -r -f -a "table\t'Aligned columns for people'
wide\t'Like table, with more columns'
json\t'JSON: stable field names, for scripts'
yaml\t'YAML, same fields as JSON'"
complete -c opampctl -n "__fish_opampctl_using_subcommand users; and __fish_seen_subcommand_from list" -l ca-file -d 'PEM file of a CA to trust for an https server (besides the built-in roots)' -r -F
complete -c opampctl -n "__fish_opampctl_using_subcommand users; and __fish_seen_subcommand_from list" -l request-timeout -d 'Timeout of one request to the server, e.g. 10s' -r
complete -c opampctl -n "__fish_opampctl_using_subcommand users; and __fish_seen_subcommand_from list" -s q -l quiet -d 'Print nothing on success: the exit code is the answer (errors still go to stderr)'
complete -c opampctl -n "__fish_opampctl_using_subcommand users; and __fish_seen_subcommand_from list" -l no-color -d 'No colour (also with NO_COLOR set or TERM=dumb)'
complete -c opampctl -n "__fish_opampctl_using_subcommand users; and __fish_seen_subcommand_from list" -s h -l help -d 'Print help (see more with \'--help\')'
complete -c opampctl -n "__fish_opampctl_using_subcommand users; and __fish_seen_subcommand_from create" -l role -d 'The user\'s role' -r -f -a "admin\t''
operator\t''
viewer\t''"
complete -c opampctl -n "__fish_opampctl_using_subcommand users; and __fish_seen_subcommand_from create" -l server -d 'Base URL of opampd [default: http://127.0.0.1:8080]' -r
complete -c opampctl -n "__fish_opampctl_using_subcommand users; and __fish_seen_subcommand_from create" -l token -d 'API token (an admin or operator token, or a login JWT)' -r
complete -c opampctl -n "__fish_opampctl_using_subcommand users; and __fish_seen_subcommand_from create" -l token-file -d 'File holding the API token [default: ./data/admin.token, then /var/lib/opampd/admin.token, for a server on this host]' -r -F
complete -c opampctl -n "__fish_opampctl_using_subcommand users; and __fish_seen_subcommand_from create" -l context -d 'Context of the config file to use (server and token file)' -r
complete -c opampctl -n "__fish_opampctl_using_subcommand users; and __fish_seen_subcommand_from create" -s o -l output -d 'Output format' -r -f -a "table\t'Aligned columns for people'
wide\t'Like table, with more columns'
json\t'JSON: stable field names, for scripts'
yaml\t'YAML, same fields as JSON'"
complete -c opampctl -n "__fish_opampctl_using_subcommand users; and __fish_seen_subcommand_from create" -l ca-file -d 'PEM file of a CA to trust for an https server (besides the built-in roots)' -r -F
complete -c opampctl -n "__fish_opampctl_using_subcommand users; and __fish_seen_subcommand_from create" -l request-timeout -d 'Timeout of one request to the server, e.g. 10s' -r
complete -c opampctl -n "__fish_opampctl_using_subcommand users; and __fish_seen_subcommand_from create" -l password-stdin -d 'Read the password from stdin (its first line)'
complete -c opampctl -n "__fish_opampctl_using_subcommand users; and __fish_seen_subcommand_from create" -s q -l quiet -d 'Print nothing on success: the exit code is the answer (errors still go to stderr)'
complete -c opampctl -n "__fish_opampctl_using_subcommand users; and __fish_seen_subcommand_from create" -l no-color -d 'No colour (also with NO_COLOR set or TERM=dumb)'
complete -c opampctl -n "__fish_opampctl_using_subcommand users; and __fish_seen_subcommand_from create" -s h -l help -d 'Print help (see more with \'--help\')'
complete -c opampctl -n "__fish_opampctl_using_subcommand users; and __fish_seen_subcommand_from set-role" -l server -d 'Base URL of opampd [default: http://127.0.0.1:8080]' -r
complete -c opampctl -n "__fish_opampctl_using_subcommand users; and __fish_seen_subcommand_from set-role" -l token -d 'API token (an admin or operator token, or a login JWT)' -r
complete -c opampctl -n "__fish_opampctl_using_subcommand users; and __fish_seen_subcommand_from set-role" -l token-file -d 'File holding the API token [default: ./data/admin.token, then /var/lib/opampd/admin.token, for a server on this host]' -r -F
complete -c opampctl -n "__fish_opampctl_using_subcommand users; and __fish_seen_subcommand_from set-role" -l context -d 'Context of the config file to use (server and token file)' -r
complete -c opampctl -n "__fish_opampctl_using_subcommand users; and __fish_seen_subcommand_from set-role" -s o -l output -d 'Output format' -r -f -a "table\t'Aligned columns for people'
wide\t'Like table, with more columns'
json\t'JSON: stable field names, for scripts'
yaml\t'YAML, same fields as JSON'"
complete -c opampctl -n "__fish_opampctl_using_subcommand users; and __fish_seen_subcommand_from set-role" -l ca-file -d 'PEM file of a CA to trust for an https server (besides the built-in roots)' -r -F
complete -c opampctl -n "__fish_opampctl_using_subcommand users; and __fish_seen_subcommand_from set-role" -l request-timeout -d 'Timeout of one request to the server, e.g. 10s' -r
complete -c opampctl -n "__fish_opampctl_using_subcommand users; and __fish_seen_subcommand_from set-role" -s q -l quiet -d 'Print nothing on success: the exit code is the answer (errors still go to stderr)'
complete -c opampctl -n "__fish_opampctl_using_subcommand users; and __fish_seen_subcommand_from set-role" -l no-color -d 'No colour (also with NO_COLOR set or TERM=dumb)'
complete -c opampctl -n "__fish_opampctl_using_subcommand users; and __fish_seen_subcommand_from set-role" -s h -l help -d 'Print help (see more with \'--help\')'
complete -c opampctl -n "__fish_opampctl_using_subcommand users; and __fish_seen_subcommand_from set-password" -l server -d 'Base URL of opampd [default: http://127.0.0.1:8080]' -r
complete -c opampctl -n "__fish_opampctl_using_subcommand users; and __fish_seen_subcommand_from set-password" -l token -d 'API token (an admin or operator token, or a login JWT)' -r
complete -c opampctl -n "__fish_opampctl_using_subcommand users; and __fish_seen_subcommand_from set-password" -l token-file -d 'File holding the API token [default: ./data/admin.token, then /var/lib/opampd/admin.token, for a server on this host]' -r -F
complete -c opampctl -n "__fish_opampctl_using_subcommand users; and __fish_seen_subcommand_from set-password" -l context -d 'Context of the config file to use (server and token file)' -r
complete -c opampctl -n "__fish_opampctl_using_subcommand users; and __fish_seen_subcommand_from set-password" -s o -l output -d 'Output format' -r -f -a "table\t'Aligned columns for people'
wide\t'Like table, with more columns'
json\t'JSON: stable field names, for scripts'
yaml\t'YAML, same fields as JSON'"
complete -c opampctl -n "__fish_opampctl_using_subcommand users; and __fish_seen_subcommand_from set-password" -l ca-file -d 'PEM file of a CA to trust for an https server (besides the built-in roots)' -r -F
complete -c opampctl -n "__fish_opampctl_using_subcommand users; and __fish_seen_subcommand_from set-password" -l request-timeout -d 'Timeout of one request to the server, e.g. 10s' -r
complete -c opampctl -n "__fish_opampctl_using_subcommand users; and __fish_seen_subcommand_from set-password" -l password-stdin -d 'Read the password from stdin (its first line)'
complete -c opampctl -n "__fish_opampctl_using_subcommand users; and __fish_seen_subcommand_from set-password" -s q -l quiet -d 'Print nothing on success: the exit code is the answer (errors still go to stderr)'
complete -c opampctl -n "__fish_opampctl_using_subcommand users; and __fish_seen_subcommand_from set-password" -l no-color -d 'No colour (also with NO_COLOR set or TERM=dumb)'
complete -c opampctl -n "__fish_opampctl_using_subcommand users; and __fish_seen_subcommand_from set-password" -s h -l help -d 'Print help (see more with \'--help\')'
complete -c opampctl -n "__fish_opampctl_using_subcommand users; and __fish_seen_subcommand_from delete" -l server -d 'Base URL of opampd [default: http://127.0.0.1:8080]' -r
complete -c opampctl -n "__fish_opampctl_using_subcommand users; and __fish_seen_subcommand_from delete" -l token -d 'API token (an admin or operator token, or a login JWT)' -r
complete -c opampctl -n "__fish_opampctl_using_subcommand users; and __fish_seen_subcommand_from delete" -l token-file -d 'File holding the API token [default: ./data/admin.token, then /var/lib/opampd/admin.token, for a server on this host]' -r -F
complete -c opampctl -n "__fish_opampctl_using_subcommand users; and __fish_seen_subcommand_from delete" -l context -d 'Context of the config file to use (server and token file)' -r
complete -c opampctl -n "__fish_opampctl_using_subcommand users; and __fish_seen_subcommand_from delete" -s o -l output -d 'Output format' -r -f -a "table\t'Aligned columns for people'
wide\t'Like table, with more columns'
json\t'JSON: stable field names, for scripts'
yaml\t'YAML, same fields as JSON'"
complete -c opampctl -n "__fish_opampctl_using_subcommand users; and __fish_seen_subcommand_from delete" -l ca-file -d 'PEM file of a CA to trust for an https server (besides the built-in roots)' -r -F
complete -c opampctl -n "__fish_opampctl_using_subcommand users; and __fish_seen_subcommand_from delete" -l request-timeout -d 'Timeout of one request to the server, e.g. 10s' -r
complete -c opampctl -n "__fish_opampctl_using_subcommand users; and __fish_seen_subcommand_from delete" -s q -l quiet -d 'Print nothing on success: the exit code is the answer (errors still go to stderr)'
complete -c opampctl -n "__fish_opampctl_using_subcommand users; and __fish_seen_subcommand_from delete" -l no-color -d 'No colour (also with NO_COLOR set or TERM=dumb)'
complete -c opampctl -n "__fish_opampctl_using_subcommand users; and __fish_seen_subcommand_from delete" -s h -l help -d 'Print help (see more with \'--help\')'
complete -c opampctl -n "__fish_opampctl_using_subcommand tokens; and not __fish_seen_subcommand_from list create revoke" -l server -d 'Base URL of opampd [default: http://127.0.0.1:8080]' -r
complete -c opampctl -n "__fish_opampctl_using_subcommand tokens; and not __fish_seen_subcommand_from list create revoke" -l token -d 'API token (an admin or operator token, or a login JWT)' -r
complete -c opampctl -n "__fish_opampctl_using_subcommand tokens; and not __fish_seen_subcommand_from list create revoke" -l token-file -d 'File holding the API token [default: ./data/admin.token, then /var/lib/opampd/admin.token, for a server on this host]' -r -F
complete -c opampctl -n "__fish_opampctl_using_subcommand tokens; and not __fish_seen_subcommand_from list create revoke" -l context -d 'Context of the config file to use (server and token file)' -r
complete -c opampctl -n "__fish_opampctl_using_subcommand tokens; and not __fish_seen_subcommand_from list create revoke" -s o -l output -d 'Output format' -r -f -a "table\t'Aligned columns for people'
wide\t'Like table, with more columns'
json\t'JSON: stable field names, for scripts'
yaml\t'YAML, same fields as JSON'"
complete -c opampctl -n "__fish_opampctl_using_subcommand tokens; and not __fish_seen_subcommand_from list create revoke" -l ca-file -d 'PEM file of a CA to trust for an https server (besides the built-in roots)' -r -F
complete -c opampctl -n "__fish_opampctl_using_subcommand tokens; and not __fish_seen_subcommand_from list create revoke" -l request-timeout -d 'Timeout of one request to the server, e.g. 10s' -r
complete -c opampctl -n "__fish_opampctl_using_subcommand tokens; and not __fish_seen_subcommand_from list create revoke" -s q -l quiet -d 'Print nothing on success: the exit code is the answer (errors still go to stderr)'
complete -c opampctl -n "__fish_opampctl_using_subcommand tokens; and not __fish_seen_subcommand_from list create revoke" -l no-color -d 'No colour (also with NO_COLOR set or TERM=dumb)'
complete -c opampctl -n "__fish_opampctl_using_subcommand tokens; and not __fish_seen_subcommand_from list create revoke" -s h -l help -d 'Print help (see more with \'--help\')'
complete -c opampctl -n "__fish_opampctl_using_subcommand tokens; and not __fish_seen_subcommand_from list create revoke" -f -a "list" -d 'List your tokens (an admin: everybody\'s)'
complete -c opampctl -n "__fish_opampctl_using_subcommand tokens; and not __fish_seen_subcommand_from list create revoke" -f -a "create" -d 'Create a token; prints its secret once (also with -q)'
complete -c opampctl -n "__fish_opampctl_using_subcommand tokens; and not __fish_seen_subcommand_from list create revoke" -f -a "revoke" -d 'Revoke a token by its id (see tokens list)'
complete -c opampctl -n "__fish_opampctl_using_subcommand tokens; and __fish_seen_subcommand_from list" -l server -d 'Base URL of opampd [default: http://127.0.0.1:8080]' -r
complete -c opampctl -n "__fish_opampctl_using_subcommand tokens; and __fish_seen_subcommand_from list" -l token -d 'API token (an admin or operator token, or a login JWT)' -r
complete -c opampctl -n "__fish_opampctl_using_subcommand tokens; and __fish_seen_subcommand_from list" -l token-file -d 'File holding the API token [default: ./data/admin.token, then /var/lib/opampd/admin.token, for a server on this host]' -r -F
complete -c opampctl -n "__fish_opampctl_using_subcommand tokens; and __fish_seen_subcommand_from list" -l context -d 'Context of the config file to use (server and token file)' -r
complete -c opampctl -n "__fish_opampctl_using_subcommand tokens; and __fish_seen_subcommand_from list" -s o -l output -d 'Output format' -r -f -a "table\t'Aligned columns for people'
wide\t'Like table, with more columns'
json\t'JSON: stable field names, for scripts'
yaml\t'YAML, same fields as JSON'"
complete -c opampctl -n "__fish_opampctl_using_subcommand tokens; and __fish_seen_subcommand_from list" -l ca-file -d 'PEM file of a CA to trust for an https server (besides the built-in roots)' -r -F
complete -c opampctl -n "__fish_opampctl_using_subcommand tokens; and __fish_seen_subcommand_from list" -l request-timeout -d 'Timeout of one request to the server, e.g. 10s' -r
complete -c opampctl -n "__fish_opampctl_using_subcommand tokens; and __fish_seen_subcommand_from list" -s q -l quiet -d 'Print nothing on success: the exit code is the answer (errors still go to stderr)'
complete -c opampctl -n "__fish_opampctl_using_subcommand tokens; and __fish_seen_subcommand_from list" -l no-color -d 'No colour (also with NO_COLOR set or TERM=dumb)'
complete -c opampctl -n "__fish_opampctl_using_subcommand tokens; and __fish_seen_subcommand_from list" -s h -l help -d 'Print help (see more with \'--help\')'
complete -c opampctl -n "__fish_opampctl_using_subcommand tokens; and __fish_seen_subcommand_from create" -l role -d 'Its role, at most yours (default: yours)' -r -f -a "admin\t''
operator\t''
viewer\t''"
complete -c opampctl -n "__fish_opampctl_using_subcommand tokens; and __fish_seen_subcommand_from create" -l expires-in-days -d 'Lifetime in days (1-3650), or `never` (default: the server\'s, 90 days)' -r
complete -c opampctl -n "__fish_opampctl_using_subcommand tokens; and __fish_seen_subcommand_from create" -l server -d 'Base URL of opampd [default: http://127.0.0.1:8080]' -r
complete -c opampctl -n "__fish_opampctl_using_subcommand tokens; and __fish_seen_subcommand_from create" -l token -d 'API token (an admin or operator token, or a login JWT)' -r
complete -c opampctl -n "__fish_opampctl_using_subcommand tokens; and __fish_seen_subcommand_from create" -l token-file -d 'File holding the API token [default: ./data/admin.token, then /var/lib/opampd/admin.token, for a server on this host]' -r -F
complete -c opampctl -n "__fish_opampctl_using_subcommand tokens; and __fish_seen_subcommand_from create" -l context -d 'Context of the config file to use (server and token file)' -r
complete -c opampctl -n "__fish_opampctl_using_subcommand tokens; and __fish_seen_subcommand_from create" -s o -l output -d 'Output format' -r -f -a "table\t'Aligned columns for people'
wide\t'Like table, with more columns'
json\t'JSON: stable field names, for scripts'
yaml\t'YAML, same fields as JSON'"
complete -c opampctl -n "__fish_opampctl_using_subcommand tokens; and __fish_seen_subcommand_from create" -l ca-file -d 'PEM file of a CA to trust for an https server (besides the built-in roots)' -r -F
complete -c opampctl -n "__fish_opampctl_using_subcommand tokens; and __fish_seen_subcommand_from create" -l request-timeout -d 'Timeout of one request to the server, e.g. 10s' -r
complete -c opampctl -n "__fish_opampctl_using_subcommand tokens; and __fish_seen_subcommand_from create" -s q -l quiet -d 'Print nothing on success: the exit code is the answer (errors still go to stderr)'
complete -c opampctl -n "__fish_opampctl_using_subcommand tokens; and __fish_seen_subcommand_from create" -l no-color -d 'No colour (also with NO_COLOR set or TERM=dumb)'
complete -c opampctl -n "__fish_opampctl_using_subcommand tokens; and __fish_seen_subcommand_from create" -s h -l help -d 'Print help (see more with \'--help\')'
complete -c opampctl -n "__fish_opampctl_using_subcommand tokens; and __fish_seen_subcommand_from revoke" -l server -d 'Base URL of opampd [default: http://127.0.0.1:8080]' -r
complete -c opampctl -n "__fish_opampctl_using_subcommand tokens; and __fish_seen_subcommand_from revoke" -l token -d 'API token (an admin or operator token, or a login JWT)' -r
complete -c opampctl -n "__fish_opampctl_using_subcommand tokens; and __fish_seen_subcommand_from revoke" -l token-file -d 'File holding the API token [default: ./data/admin.token, then /var/lib/opampd/admin.token, for a server on this host]' -r -F
complete -c opampctl -n "__fish_opampctl_using_subcommand tokens; and __fish_seen_subcommand_from revoke" -l context -d 'Context of the config file to use (server and token file)' -r
complete -c opampctl -n "__fish_opampctl_using_subcommand tokens; and __fish_seen_subcommand_from revoke" -s o -l output -d 'Output format' -r -f -a "table\t'Aligned columns for people'
wide\t'Like table, with more columns'
json\t'JSON: stable field names, for scripts'
yaml\t'YAML, same fields as JSON'"
complete -c opampctl -n "__fish_opampctl_using_subcommand tokens; and __fish_seen_subcommand_from revoke" -l ca-file -d 'PEM file of a CA to trust for an https server (besides the built-in roots)' -r -F
complete -c opampctl -n "__fish_opampctl_using_subcommand tokens; and __fish_seen_subcommand_from revoke" -l request-timeout -d 'Timeout of one request to the server, e.g. 10s' -r
complete -c opampctl -n "__fish_opampctl_using_subcommand tokens; and __fish_seen_subcommand_from revoke" -s q -l quiet -d 'Print nothing on success: the exit code is the answer (errors still go to stderr)'
complete -c opampctl -n "__fish_opampctl_using_subcommand tokens; and __fish_seen_subcommand_from revoke" -l no-color -d 'No colour (also with NO_COLOR set or TERM=dumb)'
complete -c opampctl -n "__fish_opampctl_using_subcommand tokens; and __fish_seen_subcommand_from revoke" -s h -l help -d 'Print help (see more with \'--help\')'
complete -c opampctl -n "__fish_opampctl_using_subcommand login" -s u -l username -d 'The user to log in as [default: asked on a terminal]' -r
complete -c opampctl -n "__fish_opampctl_using_subcommand login" -l server -d 'Base URL of opampd [default: http://127.0.0.1:8080]' -r
complete -c opampctl -n "__fish_opampctl_using_subcommand login" -l token -d 'API token (an admin or operator token, or a login JWT)' -r
complete -c opampctl -n "__fish_opampctl_using_subcommand login" -l token-file -d 'File holding the API token [default: ./data/admin.token, then /var/lib/opampd/admin.token, for a server on this host]' -r -F
complete -c opampctl -n "__fish_opampctl_using_subcommand login" -l context -d 'Context of the config file to use (server and token file)' -r
complete -c opampctl -n "__fish_opampctl_using_subcommand login" -s o -l output -d 'Output format' -r -f -a "table\t'Aligned columns for people'
wide\t'Like table, with more columns'
json\t'JSON: stable field names, for scripts'
yaml\t'YAML, same fields as JSON'"
complete -c opampctl -n "__fish_opampctl_using_subcommand login" -l ca-file -d 'PEM file of a CA to trust for an https server (besides the built-in roots)' -r -F
complete -c opampctl -n "__fish_opampctl_using_subcommand login" -l request-timeout -d 'Timeout of one request to the server, e.g. 10s' -r
complete -c opampctl -n "__fish_opampctl_using_subcommand login" -l password-stdin -d 'Read the password from stdin (its first line) instead of asking on the terminal'
complete -c opampctl -n "__fish_opampctl_using_subcommand login" -s q -l quiet -d 'Print nothing on success: the exit code is the answer (errors still go to stderr)'
complete -c opampctl -n "__fish_opampctl_using_subcommand login" -l no-color -d 'No colour (also with NO_COLOR set or TERM=dumb)'
complete -c opampctl -n "__fish_opampctl_using_subcommand login" -s h -l help -d 'Print help (see more with \'--help\')'
complete -c opampctl -n "__fish_opampctl_using_subcommand logout" -l server -d 'Base URL of opampd [default: http://127.0.0.1:8080]' -r
complete -c opampctl -n "__fish_opampctl_using_subcommand logout" -l token -d 'API token (an admin or operator token, or a login JWT)' -r
complete -c opampctl -n "__fish_opampctl_using_subcommand logout" -l token-file -d 'File holding the API token [default: ./data/admin.token, then /var/lib/opampd/admin.token, for a server on this host]' -r -F
complete -c opampctl -n "__fish_opampctl_using_subcommand logout" -l context -d 'Context of the config file to use (server and token file)' -r
complete -c opampctl -n "__fish_opampctl_using_subcommand logout" -s o -l output -d 'Output format' -r -f -a "table\t'Aligned columns for people'
wide\t'Like table, with more columns'
json\t'JSON: stable field names, for scripts'
yaml\t'YAML, same fields as JSON'"
complete -c opampctl -n "__fish_opampctl_using_subcommand logout" -l ca-file -d 'PEM file of a CA to trust for an https server (besides the built-in roots)' -r -F
complete -c opampctl -n "__fish_opampctl_using_subcommand logout" -l request-timeout -d 'Timeout of one request to the server, e.g. 10s' -r
complete -c opampctl -n "__fish_opampctl_using_subcommand logout" -s q -l quiet -d 'Print nothing on success: the exit code is the answer (errors still go to stderr)'
complete -c opampctl -n "__fish_opampctl_using_subcommand logout" -l no-color -d 'No colour (also with NO_COLOR set or TERM=dumb)'
complete -c opampctl -n "__fish_opampctl_using_subcommand logout" -s h -l help -d 'Print help (see more with \'--help\')'
complete -c opampctl -n "__fish_opampctl_using_subcommand alerts; and not __fish_seen_subcommand_from rules" -l server -d 'Base URL of opampd [default: http://127.0.0.1:8080]' -r
complete -c opampctl -n "__fish_opampctl_using_subcommand alerts; and not __fish_seen_subcommand_from rules" -l token -d 'API token (an admin or operator token, or a login JWT)' -r
complete -c opampctl -n "__fish_opampctl_using_subcommand alerts; and not __fish_seen_subcommand_from rules" -l token-file -d 'File holding the API token [default: ./data/admin.token, then /var/lib/opampd/admin.token, for a server on this host]' -r -F
complete -c opampctl -n "__fish_opampctl_using_subcommand alerts; and not __fish_seen_subcommand_from rules" -l context -d 'Context of the config file to use (server and token file)' -r
complete -c opampctl -n "__fish_opampctl_using_subcommand alerts; and not __fish_seen_subcommand_from rules" -s o -l output -d 'Output format' -r -f -a "table\t'Aligned columns for people'
wide\t'Like table, with more columns'
json\t'JSON: stable field names, for scripts'
yaml\t'YAML, same fields as JSON'"
complete -c opampctl -n "__fish_opampctl_using_subcommand alerts; and not __fish_seen_subcommand_from rules" -l ca-file -d 'PEM file of a CA to trust for an https server (besides the built-in roots)' -r -F
complete -c opampctl -n "__fish_opampctl_using_subcommand alerts; and not __fish_seen_subcommand_from rules" -l request-timeout -d 'Timeout of one request to the server, e.g. 10s' -r
complete -c opampctl -n "__fish_opampctl_using_subcommand alerts; and not __fish_seen_subcommand_from rules" -s q -l quiet -d 'Print nothing on success: the exit code is the answer (errors still go to stderr)'
complete -c opampctl -n "__fish_opampctl_using_subcommand alerts; and not __fish_seen_subcommand_from rules" -l no-color -d 'No colour (also with NO_COLOR set or TERM=dumb)'
complete -c opampctl -n "__fish_opampctl_using_subcommand alerts; and not __fish_seen_subcommand_from rules" -s h -l help -d 'Print help (see more with \'--help\')'
complete -c opampctl -n "__fish_opampctl_using_subcommand alerts; and not __fish_seen_subcommand_from rules" -f -a "rules" -d 'Print the Prometheus alerting rules (rules.yml)'
complete -c opampctl -n "__fish_opampctl_using_subcommand alerts; and __fish_seen_subcommand_from rules" -l server -d 'Base URL of opampd [default: http://127.0.0.1:8080]' -r
complete -c opampctl -n "__fish_opampctl_using_subcommand alerts; and __fish_seen_subcommand_from rules" -l token -d 'API token (an admin or operator token, or a login JWT)' -r
complete -c opampctl -n "__fish_opampctl_using_subcommand alerts; and __fish_seen_subcommand_from rules" -l token-file -d 'File holding the API token [default: ./data/admin.token, then /var/lib/opampd/admin.token, for a server on this host]' -r -F
complete -c opampctl -n "__fish_opampctl_using_subcommand alerts; and __fish_seen_subcommand_from rules" -l context -d 'Context of the config file to use (server and token file)' -r
complete -c opampctl -n "__fish_opampctl_using_subcommand alerts; and __fish_seen_subcommand_from rules" -s o -l output -d 'Output format' -r -f -a "table\t'Aligned columns for people'
wide\t'Like table, with more columns'
json\t'JSON: stable field names, for scripts'
yaml\t'YAML, same fields as JSON'"
complete -c opampctl -n "__fish_opampctl_using_subcommand alerts; and __fish_seen_subcommand_from rules" -l ca-file -d 'PEM file of a CA to trust for an https server (besides the built-in roots)' -r -F
complete -c opampctl -n "__fish_opampctl_using_subcommand alerts; and __fish_seen_subcommand_from rules" -l request-timeout -d 'Timeout of one request to the server, e.g. 10s' -r
complete -c opampctl -n "__fish_opampctl_using_subcommand alerts; and __fish_seen_subcommand_from rules" -s q -l quiet -d 'Print nothing on success: the exit code is the answer (errors still go to stderr)'
complete -c opampctl -n "__fish_opampctl_using_subcommand alerts; and __fish_seen_subcommand_from rules" -l no-color -d 'No colour (also with NO_COLOR set or TERM=dumb)'
complete -c opampctl -n "__fish_opampctl_using_subcommand alerts; and __fish_seen_subcommand_from rules" -s h -l help -d 'Print help (see more with \'--help\')'
complete -c opampctl -n "__fish_opampctl_using_subcommand bench" -l agents -d 'Number of simulated agents, in total over all processes' -r
complete -c opampctl -n "__fish_opampctl_using_subcommand bench" -l duration -d 'Measured phase; for rollout and reconnect, the longest wait' -r
complete -c opampctl -n "__fish_opampctl_using_subcommand bench" -l heartbeat -d 'Heartbeat interval of the agents of hold, rollout and reconnect' -r
complete -c opampctl -n "__fish_opampctl_using_subcommand bench" -l transport -d 'Transport of hold and status [default: ws; http mode always uses http, rollout and reconnect ws]' -r -f -a "ws\t'WebSocket'
http\t'Plain HTTP (POST per message)'"
complete -c opampctl -n "__fish_opampctl_using_subcommand bench" -l connections -d 'Keep-alive connections of plain-HTTP agents, in total' -r
complete -c opampctl -n "__fish_opampctl_using_subcommand bench" -l config-bytes -d 'Size of each agent\'s effective config, and of the rolled-out configuration' -r
complete -c opampctl -n "__fish_opampctl_using_subcommand bench" -l server-pid -d 'opampd\'s process id on this host: measure its memory (VmRSS), CPU time and open files; with several --server, one per replica in the same order (repeated, or a comma list)' -r
complete -c opampctl -n "__fish_opampctl_using_subcommand bench" -l processes -d 'Worker processes simulating the agents (each one a share of --agents)' -r
complete -c opampctl -n "__fish_opampctl_using_subcommand bench" -l source-ips -d 'Local addresses to connect from, round-robin: a range A-B, a list A,B,C or one address' -r
complete -c opampctl -n "__fish_opampctl_using_subcommand bench" -l ramp -d 'How fast agents connect, in total: N/s, N/m or N (per second)' -r
complete -c opampctl -n "__fish_opampctl_using_subcommand bench" -l secret -d 'Agent secret, sent as \'Authorization: Bearer SECRET\'' -r
complete -c opampctl -n "__fish_opampctl_using_subcommand bench" -l opamp-url -d 'OpAMP endpoint (http://, plain listeners only) [default: SERVER/v1/opamp]' -r
complete -c opampctl -n "__fish_opampctl_using_subcommand bench" -l restart-cmd -d 'reconnect: command that restarts opampd, run with sh -c (without it, restart opampd yourself)' -r
complete -c opampctl -n "__fish_opampctl_using_subcommand bench" -l jitter -d 'reconnect: the longest random delay before an agent reconnects' -r
complete -c opampctl -n "__fish_opampctl_using_subcommand bench" -l load -d 'compare: the load run against both servers (hold, status or http) [default: hold]' -r -f -a "hold\t'Idle agents with heartbeats: connect time, RSS per agent, CPU per heartbeat'
status\t'Health-status changes as fast as possible: messages/s, latency, CPU'
http\t'Plain-HTTP polls as fast as possible: requests/s, latency, CPU'
rollout\t'Time for a configuration to reach and be applied by every agent'
reconnect\t'Time for every agent to come back after a server restart'
compare\t'The same load against two OpAMP servers, alternately: each figure side by side and its ratio'"
complete -c opampctl -n "__fish_opampctl_using_subcommand bench" -l server-a -d 'compare: OpAMP endpoint of the first server (ws:// or http://; path /v1/opamp when none)' -r
complete -c opampctl -n "__fish_opampctl_using_subcommand bench" -l pid-a -d 'compare: process id of the first server on this host' -r
complete -c opampctl -n "__fish_opampctl_using_subcommand bench" -l server-b -d 'compare: OpAMP endpoint of the second server (ws:// or http://; path /v1/opamp when none)' -r
complete -c opampctl -n "__fish_opampctl_using_subcommand bench" -l pid-b -d 'compare: process id of the second server on this host' -r
complete -c opampctl -n "__fish_opampctl_using_subcommand bench" -l rounds -d 'compare: rounds, each one run against each server (A B, then B A)' -r
complete -c opampctl -n "__fish_opampctl_using_subcommand bench" -l server -d 'Base URL of opampd [default: http://127.0.0.1:8080]' -r
complete -c opampctl -n "__fish_opampctl_using_subcommand bench" -l token -d 'API token (an admin or operator token, or a login JWT)' -r
complete -c opampctl -n "__fish_opampctl_using_subcommand bench" -l token-file -d 'File holding the API token [default: ./data/admin.token, then /var/lib/opampd/admin.token, for a server on this host]' -r -F
complete -c opampctl -n "__fish_opampctl_using_subcommand bench" -l context -d 'Context of the config file to use (server and token file)' -r
complete -c opampctl -n "__fish_opampctl_using_subcommand bench" -s o -l output -d 'Output format' -r -f -a "table\t'Aligned columns for people'
wide\t'Like table, with more columns'
json\t'JSON: stable field names, for scripts'
yaml\t'YAML, same fields as JSON'"
complete -c opampctl -n "__fish_opampctl_using_subcommand bench" -l ca-file -d 'PEM file of a CA to trust for an https server (besides the built-in roots)' -r -F
complete -c opampctl -n "__fish_opampctl_using_subcommand bench" -l request-timeout -d 'Timeout of one request to the server, e.g. 10s' -r
complete -c opampctl -n "__fish_opampctl_using_subcommand bench" -l gzip -d 'http: send \'Accept-Encoding: gzip\''
complete -c opampctl -n "__fish_opampctl_using_subcommand bench" -l keep -d 'Leave the simulated agents in the inventory (by default they are deleted at the end, with an operator token)'
complete -c opampctl -n "__fish_opampctl_using_subcommand bench" -l cleanup -d 'The default now: the simulated agents are deleted unless --keep'
complete -c opampctl -n "__fish_opampctl_using_subcommand bench" -s q -l quiet -d 'Print nothing on success: the exit code is the answer (errors still go to stderr)'
complete -c opampctl -n "__fish_opampctl_using_subcommand bench" -l no-color -d 'No colour (also with NO_COLOR set or TERM=dumb)'
complete -c opampctl -n "__fish_opampctl_using_subcommand bench" -s h -l help -d 'Print help (see more with \'--help\')'
complete -c opampctl -n "__fish_opampctl_using_subcommand completions" -l server -d 'Base URL of opampd [default: http://127.0.0.1:8080]' -r
complete -c opampctl -n "__fish_opampctl_using_subcommand completions" -l token -d 'API token (an admin or operator token, or a login JWT)' -r
complete -c opampctl -n "__fish_opampctl_using_subcommand completions" -l token-file -d 'File holding the API token [default: ./data/admin.token, then /var/lib/opampd/admin.token, for a server on this host]' -r -F
complete -c opampctl -n "__fish_opampctl_using_subcommand completions" -l context -d 'Context of the config file to use (server and token file)' -r
complete -c opampctl -n "__fish_opampctl_using_subcommand completions" -s o -l output -d 'Output format' -r -f -a "table\t'Aligned columns for people'
wide\t'Like table, with more columns'
json\t'JSON: stable field names, for scripts'
yaml\t'YAML, same fields as JSON'"
complete -c opampctl -n "__fish_opampctl_using_subcommand completions" -l ca-file -d 'PEM file of a CA to trust for an https server (besides the built-in roots)' -r -F
complete -c opampctl -n "__fish_opampctl_using_subcommand completions" -l request-timeout -d 'Timeout of one request to the server, e.g. 10s' -r
complete -c opampctl -n "__fish_opampctl_using_subcommand completions" -s q -l quiet -d 'Print nothing on success: the exit code is the answer (errors still go to stderr)'
complete -c opampctl -n "__fish_opampctl_using_subcommand completions" -l no-color -d 'No colour (also with NO_COLOR set or TERM=dumb)'
complete -c opampctl -n "__fish_opampctl_using_subcommand completions" -s h -l help -d 'Print help (see more with \'--help\')'
complete -c opampctl -n "__fish_opampctl_using_subcommand man" -l dir -d 'Write opampctl.1 and one page per subcommand into this directory' -r -F
complete -c opampctl -n "__fish_opampctl_using_subcommand man" -l server -d 'Base URL of opampd [default: http://127.0.0.1:8080]' -r
complete -c opampctl -n "__fish_opampctl_using_subcommand man" -l token -d 'API token (an admin or operator token, or a login JWT)' -r
complete -c opampctl -n "__fish_opampctl_using_subcommand man" -l token-file -d 'File holding the API token [default: ./data/admin.token, then /var/lib/opampd/admin.token, for a server on this host]' -r -F
complete -c opampctl -n "__fish_opampctl_using_subcommand man" -l context -d 'Context of the config file to use (server and token file)' -r
complete -c opampctl -n "__fish_opampctl_using_subcommand man" -s o -l output -d 'Output format' -r -f -a "table\t'Aligned columns for people'
wide\t'Like table, with more columns'
json\t'JSON: stable field names, for scripts'
yaml\t'YAML, same fields as JSON'"
complete -c opampctl -n "__fish_opampctl_using_subcommand man" -l ca-file -d 'PEM file of a CA to trust for an https server (besides the built-in roots)' -r -F
complete -c opampctl -n "__fish_opampctl_using_subcommand man" -l request-timeout -d 'Timeout of one request to the server, e.g. 10s' -r
complete -c opampctl -n "__fish_opampctl_using_subcommand man" -s q -l quiet -d 'Print nothing on success: the exit code is the answer (errors still go to stderr)'
complete -c opampctl -n "__fish_opampctl_using_subcommand man" -l no-color -d 'No colour (also with NO_COLOR set or TERM=dumb)'
complete -c opampctl -n "__fish_opampctl_using_subcommand man" -s h -l help -d 'Print help (see more with \'--help\')'
complete -c opampctl -n "__fish_opampctl_using_subcommand __complete" -l server -d 'Base URL of opampd [default: http://127.0.0.1:8080]' -r
complete -c opampctl -n "__fish_opampctl_using_subcommand __complete" -l token -d 'API token (an admin or operator token, or a login JWT)' -r
complete -c opampctl -n "__fish_opampctl_using_subcommand __complete" -l token-file -d 'File holding the API token [default: ./data/admin.token, then /var/lib/opampd/admin.token, for a server on this host]' -r -F
complete -c opampctl -n "__fish_opampctl_using_subcommand __complete" -l context -d 'Context of the config file to use (server and token file)' -r
complete -c opampctl -n "__fish_opampctl_using_subcommand __complete" -s o -l output -d 'Output format' -r -f -a "table\t'Aligned columns for people'
wide\t'Like table, with more columns'
json\t'JSON: stable field names, for scripts'
yaml\t'YAML, same fields as JSON'"
complete -c opampctl -n "__fish_opampctl_using_subcommand __complete" -l ca-file -d 'PEM file of a CA to trust for an https server (besides the built-in roots)' -r -F
complete -c opampctl -n "__fish_opampctl_using_subcommand __complete" -l request-timeout -d 'Timeout of one request to the server, e.g. 10s' -r
complete -c opampctl -n "__fish_opampctl_using_subcommand __complete" -s q -l quiet -d 'Print nothing on success: the exit code is the answer (errors still go to stderr)'
complete -c opampctl -n "__fish_opampctl_using_subcommand __complete" -l no-color -d 'No colour (also with NO_COLOR set or TERM=dumb)'
complete -c opampctl -n "__fish_opampctl_using_subcommand __complete" -s h -l help -d 'Print help (see more with \'--help\')'

# Agent uids and configuration names come from the server: opampctl __complete agents|configs
function __fish_opampctl_server_values
    set -l server
    set -l tokens (commandline -opc)
    for i in (seq 2 (count $tokens))
        switch $tokens[$i]
            case --server --context --token --token-file --ca-file
                set -a server $tokens[$i] $tokens[(math $i + 1)]
            case '--server=*' '--context=*' '--token=*' '--token-file=*' '--ca-file=*'
                set -a server $tokens[$i]
        end
    end
    opampctl $server __complete $argv[1] 2>/dev/null
end
complete -c opampctl -n "__fish_opampctl_using_subcommand agents; and __fish_seen_subcommand_from show" -f -a "(__fish_opampctl_server_values agents)"
complete -c opampctl -n "__fish_opampctl_using_subcommand agents; and __fish_seen_subcommand_from label" -f -a "(__fish_opampctl_server_values agents)"
complete -c opampctl -n "__fish_opampctl_using_subcommand agents; and __fish_seen_subcommand_from delete" -f -a "(__fish_opampctl_server_values agents)"
complete -c opampctl -n "__fish_opampctl_using_subcommand agents; and __fish_seen_subcommand_from restart" -f -a "(__fish_opampctl_server_values agents)"
complete -c opampctl -n "__fish_opampctl_using_subcommand agents; and __fish_seen_subcommand_from components" -f -a "(__fish_opampctl_server_values agents)"
complete -c opampctl -n "__fish_opampctl_using_subcommand configs; and __fish_seen_subcommand_from show" -f -a "(__fish_opampctl_server_values configs)"
complete -c opampctl -n "__fish_opampctl_using_subcommand configs; and __fish_seen_subcommand_from history" -f -a "(__fish_opampctl_server_values configs)"
complete -c opampctl -n "__fish_opampctl_using_subcommand configs; and __fish_seen_subcommand_from diff" -f -a "(__fish_opampctl_server_values configs)"
complete -c opampctl -n "__fish_opampctl_using_subcommand configs; and __fish_seen_subcommand_from rollback" -f -a "(__fish_opampctl_server_values configs)"
complete -c opampctl -n "__fish_opampctl_using_subcommand configs; and __fish_seen_subcommand_from delete" -f -a "(__fish_opampctl_server_values configs)"
complete -c opampctl -n "__fish_opampctl_using_subcommand rollout; and __fish_seen_subcommand_from start" -f -a "(__fish_opampctl_server_values configs)"
complete -c opampctl -n "__fish_opampctl_using_subcommand rollout; and __fish_seen_subcommand_from status" -f -a "(__fish_opampctl_server_values configs)"
complete -c opampctl -n "__fish_opampctl_using_subcommand rollout; and __fish_seen_subcommand_from pause" -f -a "(__fish_opampctl_server_values configs)"
complete -c opampctl -n "__fish_opampctl_using_subcommand rollout; and __fish_seen_subcommand_from resume" -f -a "(__fish_opampctl_server_values configs)"
