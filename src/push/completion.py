"""`push completion bash|zsh`: shell completion of commands, options, servers, apps and releases.

The script is generated from push's own argument parser (commands, their options, which
options take a value), so it never lists a command or option push does not have. Servers,
apps, releases and rollouts change, so the script asks push for them as it completes:
`push completion --values servers|apps|releases [APP]|rollouts|active-rollouts`, with the --store, --config,
--push-url and --token of the line being completed, straight to the bucket or through a
push server as every other command (push.fleetcli's backend). Releases are offered as the
names people type: `latest`, `previous` and the shortest unique prefix (7+ hex) of each
git hash (full names hold ':', which shells split words on). A command with commands of its
own (`push rollout start|status|...`, `push keys ...`) completes those, then their options
and arguments (rollout ids: the recent ones for `status`, the active ones for the controls).

Both shells run one function (`_push_complete`, on the line's words, 0-based: zsh with
ksharrays), each with its own way to offer words (compgen into COMPREPLY; compadd).
"""

from __future__ import annotations

import argparse
import shlex
import sys

# The positional arguments of each command, by the kind of value they take.
POSITIONALS: dict[str, tuple[str, ...]] = {
    "status": ("servers",),
    "history": ("servers",),
    "deploy": ("servers", "apps", "releases"),
    "rollback": ("servers", "apps"),
    "remove": ("servers", "apps"),
    "unit": ("servers", "", "actions"),
    "releases": ("apps",),
    "release": ("apps",),
    "completion": ("shells",),
    # A command's own commands are named "command.subcommand" (`push rollout start ...`).
    "rollout.start": ("apps", "releases"),
    "rollout.status": ("rollouts",),
    "rollout.pause": ("active-rollouts",),
    "rollout.resume": ("active-rollouts",),
    "rollout.promote": ("active-rollouts",),
    "rollout.abort": ("active-rollouts",),
}
# Options whose value is a file or directory (completed by the shell) or a kind of name.
FILE_OPTIONS = ("--store", "--config", "--root", "--manifest", "--deb", "-o", "--output", "--signing-key", "--repo")
NAME_OPTIONS = {"--app": "apps", "--expect": "releases"}
# Passed on to `push completion --values`, so values come from where the line points.
PASSED_ON = ("--store", "--config", "--push-url", "--token")
KINDS = ("servers", "apps", "releases", "rollouts", "active-rollouts")


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser], common: argparse.ArgumentParser) -> None:
    from push.fleetcli import remote_options

    p = sub.add_parser("completion", parents=[common, remote_options()], help="print a shell completion script",
                       description="Print the completion script for SHELL. Load it with "
                                   "eval \"$(push completion bash)\" in ~/.bashrc, or "
                                   "eval \"$(push completion zsh)\" in ~/.zshrc. It completes commands, "
                                   "options, servers, apps and releases (asking push for the names).")
    p.add_argument("shell", nargs="?", choices=["bash", "zsh"])
    p.add_argument("--values", nargs="+", metavar=("KIND", "APP"),
                   help="print the names the script offers: servers, apps, releases APP, rollouts "
                        "(recent ids) or active-rollouts")
    p.set_defaults(func=cmd_completion, parser=p)


def cmd_completion(args: argparse.Namespace) -> int:
    if args.values:
        return _print_values(args)
    if args.shell is None:
        args.parser.error("give the shell: bash or zsh")
    from push.cli import build_parser

    sys.stdout.write(script(build_parser(), args.shell))
    return 0


def _print_values(args: argparse.Namespace) -> int:
    from push.fleetcli import backend

    kind, rest = args.values[0], args.values[1:]
    if kind not in KINDS:
        args.parser.error(f"--values {kind}: give one of {', '.join(KINDS)}")
    if kind == "servers" and not args.push_url:  # skiapush.conf says: no need to load the model
        from push import config

        print("\n".join(config.load(args.config, required=True).servers))
        return 0
    with backend(args, config_required=kind == "servers") as fleet:
        if kind == "servers":
            names = fleet.servers()
        elif kind == "apps":
            names = fleet.apps()
        elif kind in ("rollouts", "active-rollouts"):
            from push.rolloutcli import recent_rollouts

            names = [r.id for r in recent_rollouts(fleet) if r.active or kind == "rollouts"]
        else:
            if not rest:
                args.parser.error("--values releases needs the APP")
            names = ["latest", "previous", *short_names([r.hash for r in fleet.releases(rest[0])])]
    print("\n".join(names))
    return 0


def short_names(hashes: list[str], least: int = 7) -> list[str]:
    """Each git hash by its shortest prefix (at least `least` digits) that no other shares."""
    out = []
    for h in dict.fromkeys(hashes):
        n = least
        while n < len(h) and any(o != h and o.startswith(h[:n]) for o in hashes):
            n += 1
        out.append(h[:n])
    return out


def _subcommands(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    return {}


def script(parser: argparse.ArgumentParser, shell: str) -> str:
    """The completion script of `shell` (bash or zsh) for `parser`'s commands and options."""
    commands = _subcommands(parser)
    nested = {name: _subcommands(sub) for name, sub in commands.items() if _subcommands(sub)}
    nested_cases = [f"        {name}) echo {shlex.quote(' '.join(subs))} ;;" for name, subs in nested.items()]
    everything = dict(commands)
    for name, subs in nested.items():
        everything.update({f"{name}.{sub}": p for sub, p in subs.items()})
    option_lists: list[str] = []
    value_options: set[str] = set()
    for name, sub in everything.items():
        flags = sorted(f for a in sub._actions for f in a.option_strings if f.startswith("--"))
        option_lists.append(f"        {name}) echo {shlex.quote(' '.join(flags))} ;;")
        value_options.update(f for a in sub._actions if a.nargs != 0 for f in a.option_strings)
    positional_cases = []
    for name, kinds in POSITIONALS.items():
        positional_cases.append(f"        {name}) kinds=({' '.join(k or '-' for k in kinds)}) ;;")
    body = _BODY.format(
        commands=" ".join(commands),
        nested_cases="\n".join(nested_cases),
        option_cases="\n".join(option_lists),
        value_options="|".join(sorted(value_options)),
        positional_cases="\n".join(positional_cases),
        file_options="|".join(FILE_OPTIONS),
        passed_on="|".join(PASSED_ON),
    )
    return (_ZSH if shell == "zsh" else _BASH).format(body=body)


_BODY = r"""_push_options() {{
    case "$1" in
{option_cases}
    esac
}}

# The commands of a command that has its own (push rollout start|status|...).
_push_subcommands() {{
    case "$1" in
{nested_cases}
    esac
}}

# What to offer for the word being completed: ws is the line's words (0-based), cw the
# index of the word being completed; _push_offer and _push_files are the shell's own.
_push_complete() {{
    local cur="${{ws[cw]}}" prev="${{ws[cw-1]}}"
    local cmd="" all=0 skip=0 i w
    local -a pass pos kinds
    pass=(); pos=(); kinds=()
    for ((i = 1; i < cw; i++)); do
        w="${{ws[i]}}"
        if ((skip)); then skip=0; continue; fi
        case "$w" in
            {passed_on}) pass+=("$w" "${{ws[i+1]}}"); skip=1 ;;
            --all-servers) all=1 ;;
            {value_options}) skip=1 ;;
            -*) ;;
            *) if [[ -z "$cmd" ]]; then cmd="$w"
               elif [[ "$cmd" != *.* && -n "$(_push_subcommands "$cmd")" ]]; then cmd="$cmd.$w"
               else pos+=("$w"); fi ;;
        esac
    done
    if [[ -z "$cmd" ]]; then
        _push_offer "{commands}"
        return 0
    fi
    if [[ "$cur" == -* ]]; then
        _push_offer "$(_push_options "$cmd")"
        return 0
    fi
    if [[ "$cmd" != *.* && -n "$(_push_subcommands "$cmd")" ]]; then
        _push_offer "$(_push_subcommands "$cmd")"
        return 0
    fi
    local kind="" app=""
    case "$prev" in
        {file_options}) _push_files; return 0 ;;
        --app) kind=apps ;;
        --expect) kind=releases; app="${{pos[1]}}" ;;
        {value_options}) return 0 ;;
    esac
    if [[ -z "$kind" ]]; then
        case "$cmd" in
{positional_cases}
        esac
        local n=${{#pos[@]}}
        # push deploy --all-servers APP RELEASE: no server first.
        if [[ "$cmd" == deploy ]] && ((all)); then kinds=(apps releases); fi
        kind="${{kinds[n]}}"
        if [[ "$kind" == releases ]]; then app="${{pos[n-1]}}"; fi
    fi
    case "$kind" in
        ""|-) ;;
        shells) _push_offer "bash zsh" ;;
        actions) _push_offer "start stop restart" ;;
        releases)
            [[ -n "$app" ]] && _push_offer "$(push completion --values releases "$app" "${{pass[@]}}" 2>/dev/null)" ;;
        *) _push_offer "$(push completion --values "$kind" "${{pass[@]}}" 2>/dev/null)" ;;
    esac
    return 0
}}
"""

_BASH = r"""# bash completion for push (generated by `push completion bash`; load with
# eval "$(push completion bash)" in ~/.bashrc).
{body}
_push_offer() {{ COMPREPLY+=($(compgen -W "$1" -- "${{COMP_WORDS[COMP_CWORD]}}")); }}
_push_files() {{ COMPREPLY+=($(compgen -f -- "${{COMP_WORDS[COMP_CWORD]}}")); }}
_push() {{
    COMPREPLY=()
    local -a ws=("${{COMP_WORDS[@]}}")
    local cw=$COMP_CWORD
    _push_complete
}}
complete -F _push push
"""

_ZSH = r"""#compdef push
# zsh completion for push (generated by `push completion zsh`; load with
# eval "$(push completion zsh)" in ~/.zshrc, after compinit).
{body}
_push_offer() {{ compadd -- ${{=1}}; }}
_push_files() {{ _files; }}
_push() {{
    setopt localoptions ksharrays
    local -a ws
    ws=("${{words[@]}}")
    local cw=$((CURRENT - 1))
    _push_complete
}}
compdef _push push
"""
