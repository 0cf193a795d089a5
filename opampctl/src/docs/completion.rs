//! What the completion scripts add to clap's: arguments that name an agent
//! or a configuration are completed with `opampctl __complete agents|configs`,
//! which asks the server (the options that choose the server and the
//! credential, when on the command line, are passed on to it).

use super::ServerValue;

/// Options passed on to `opampctl __complete`: where the server is, and how
/// to authenticate.
const SERVER_OPTIONS: &[&str] = &[
    "--server",
    "--context",
    "--token",
    "--token-file",
    "--ca-file",
];

const HEADER: &str =
    "# Agent uids and configuration names come from the server: opampctl __complete agents|configs";

/// Bash: a function that completes the marked positional arguments and
/// leaves everything else to clap's `_opampctl`, registered in its place.
pub fn bash(script: &str, values: &[ServerValue], value_options: &[String]) -> String {
    let passed = SERVER_OPTIONS.join("|");
    let skipped: Vec<&str> = value_options
        .iter()
        .map(String::as_str)
        .filter(|o| !SERVER_OPTIONS.contains(o))
        .collect();
    let mut cases = String::new();
    for value in values {
        cases.push_str(&format!(
            "                \" {}\") kind={}; wanted={}; position=0 ;;\n",
            value.path.join(" "),
            value.kind,
            value.position
        ));
    }
    let function = format!(
        r#"{HEADER}
_opampctl_server_values() {{
    local cur="${{COMP_WORDS[COMP_CWORD]}}" path="" kind="" wanted=0 position=-1 word i
    local -a server=()
    for (( i = 1; i < COMP_CWORD; i++ )); do
        word="${{COMP_WORDS[i]}}"
        case "${{word}}" in
            {passed})
                server+=("${{word}}" "${{COMP_WORDS[i+1]}}")
                i=$((i + 1))
                continue
                ;;
            {skipped})
                i=$((i + 1))
                continue
                ;;
            -*)
                continue
                ;;
        esac
        if [[ -n "${{kind}}" ]]; then
            position=$((position + 1))
        else
            path="${{path}} ${{word}}"
            case "${{path}}" in
{cases}            esac
        fi
    done
    if [[ -n "${{kind}}" && ${{position}} -eq ${{wanted}} && "${{cur}}" != -* ]]; then
        COMPREPLY=( $(compgen -W "$("${{COMP_WORDS[0]}}" "${{server[@]}}" __complete "${{kind}}" 2>/dev/null)" -- "${{cur}}") )
        return 0
    fi
    _opampctl "$@"
}}

"#,
        skipped = skipped.join("|"),
    );
    let script = script.replace(
        "complete -F _opampctl ",
        "complete -F _opampctl_server_values ",
    );
    match script.rfind("if [[ \"${BASH_VERSINFO[0]}\"") {
        Some(at) => format!("{}{function}{}", &script[..at], &script[at..]),
        None => format!("{script}\n{function}complete -F _opampctl_server_values -o bashdefault -o default opampctl\n"),
    }
}

/// Zsh: the marked arguments' action becomes `_opampctl_server_values KIND`
/// (they are found by their id, which only they have), and that function is
/// defined before clap's script registers itself.
pub fn zsh(script: &str, values: &[ServerValue]) -> String {
    let mut out = String::with_capacity(script.len() + 1024);
    for line in script.split_inclusive('\n') {
        // A positional's spec: ':ID -- HELP:_default' or ':ID:_default' (two
        // leading colons when optional).
        let spec = line
            .strip_prefix("':")
            .map(|rest| rest.trim_start_matches(':'));
        let kind = values.iter().find_map(|value| {
            let named = spec.is_some_and(|rest| {
                rest.starts_with(&format!("{} -- ", value.id))
                    || rest.starts_with(&format!("{}:", value.id))
            });
            (named && line.contains(":_default'")).then_some(value.kind)
        });
        match kind {
            Some(kind) => out.push_str(&line.replacen(
                ":_default'",
                &format!(":_opampctl_server_values {kind}'"),
                1,
            )),
            None => out.push_str(line),
        }
    }
    let passed = SERVER_OPTIONS
        .iter()
        .map(|o| format!("{o}|{o}=*"))
        .collect::<Vec<_>>()
        .join("|");
    let function = format!(
        r#"{HEADER}
(( $+functions[_opampctl_server_values] )) ||
_opampctl_server_values() {{
    local -a values server
    local i
    for (( i = 2; i < CURRENT; i++ )); do
        case $words[i] in
            ({passed}) server+=($words[i]) ;;
        esac
        case $words[i] in
            ({plain}) server+=($words[i+1]) ;;
        esac
    done
    values=(${{(f)"$(_call_program values opampctl $server __complete $1 2>/dev/null)"}})
    compadd -a values
}}

"#,
        plain = SERVER_OPTIONS.join("|"),
    );
    match out.rfind("if [ \"$funcstack[1]\" = \"_opampctl\" ]; then") {
        Some(at) => format!("{}{function}{}", &out[..at], &out[at..]),
        None => format!("{out}\n{function}"),
    }
}

/// Fish: a function that runs `opampctl __complete`, and one completion per
/// command with a marked argument.
pub fn fish(script: &str, values: &[ServerValue]) -> String {
    let plain = SERVER_OPTIONS.join(" ");
    let with_value = SERVER_OPTIONS
        .iter()
        .map(|o| format!("'{o}=*'"))
        .collect::<Vec<_>>()
        .join(" ");
    let mut out = format!(
        r#"{script}
{HEADER}
function __fish_opampctl_server_values
    set -l server
    set -l tokens (commandline -opc)
    for i in (seq 2 (count $tokens))
        switch $tokens[$i]
            case {plain}
                set -a server $tokens[$i] $tokens[(math $i + 1)]
            case {with_value}
                set -a server $tokens[$i]
        end
    end
    opampctl $server __complete $argv[1] 2>/dev/null
end
"#
    );
    for value in values {
        let condition = match value.path.as_slice() {
            [command] => format!("__fish_opampctl_using_subcommand {command}"),
            [parent, command] => format!(
                "__fish_opampctl_using_subcommand {parent}; and __fish_seen_subcommand_from {command}"
            ),
            deeper => panic!("opampctl {}: fish completion of arguments three commands deep is not written", deeper.join(" ")),
        };
        out.push_str(&format!(
            "complete -c opampctl -n \"{condition}\" -f -a \"(__fish_opampctl_server_values {})\"\n",
            value.kind
        ));
    }
    out
}
