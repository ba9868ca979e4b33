"""``nkframe policy``: the policy plugin's commands, added to the command line through the
``nkframe_cli_commands`` hook (see :mod:`nkframe_policy.plugin`)."""

from __future__ import annotations

import sys

import click

from nkframe import errors
from nkframe.cli import engine_for, print_json

from . import plugin as policy_plugin
from .model import Policy


@click.group()
def policy() -> None:
    """L3/L4 allow/deny policies of endpoints (the policy plugin)."""


@policy.command("apply")
@click.argument("endpoint_id")
@click.option("-f", "--file", "path", required=True, type=click.Path(dir_okay=False, allow_dash=True),
              help="The policy, YAML or JSON ('-': standard input).")
@click.option("--dry-run", is_flag=True, help="Validate the document only; change nothing.")
@click.option("--json", "as_json", is_flag=True, help="Print the policy as applied, as JSON.")
@click.pass_context
def policy_apply(ctx, endpoint_id, path, dry_run, as_json) -> None:
    """Make FILE the policy of ENDPOINT_ID, atomically for packets, and record it in its spec."""
    try:
        text = sys.stdin.read() if path == "-" else open(path, encoding="utf-8").read()
    except (OSError, UnicodeDecodeError) as e:
        raise errors.InvalidSpec(f"cannot read policy file {path}: {e}") from None
    where = "<stdin>" if path == "-" else path
    try:
        # JSON is YAML too, so one parser gives line numbers for both.
        pol = Policy.from_yaml(text)
    except errors.InvalidSpec as e:
        raise errors.InvalidSpec(f"{where}: {e}") from None
    if not dry_run:
        pol = _apply_policy(engine_for(ctx), endpoint_id, pol, policy_plugin)
    if as_json:
        print_json({"endpoint": endpoint_id, "applied": not dry_run, "policy": pol.to_dict()})
    else:
        rules = len(pol.ingress) + len(pol.egress)
        verb = "is valid" if dry_run else f"applied to endpoint {endpoint_id}"
        click.echo(f"policy {where} ({rules} rule(s)) {verb}")


def _apply_policy(eng, endpoint_id: str, pol, policy_plugin):
    """Put ``pol`` in the kernel's policy maps and in the endpoint's stored spec.

    An endpoint created with a policy has the policy programs attached: the maps are switched
    (atomic for packets), then the spec records it.  One created without gets the policy into
    the maps first and then its programs through an in-place upgrade of its chain, so the
    programs never run without a policy.  A failure puts the old spec (and policy) back.
    """
    import attrs

    from nkframe import specstore

    if eng.pm.get_plugin("policy") is None:
        raise errors.PluginError("the policy plugin is not loaded (NKFRAME_PLUGINS or NKFRAME_DISABLE_PLUGIN_AUTOLOAD leave it out)")
    ep = eng.get_endpoint(endpoint_id)
    old_spec = ep.spec
    new_spec = attrs.evolve(old_spec, options={**old_spec.options, "policy": pol.to_dict()})
    eng.hook.nkframe_endpoint_validate(spec=new_spec)
    specstore.encode(new_spec)  # too big for the stored spec: refuse before anything changes
    root, spec_path = str(eng.layout.root), eng.layout.spec_path(endpoint_id)
    had_policy = old_spec.options.get("policy") is not None
    # The addresses go in with the policy: the uplink program judges outside->pod packets by
    # them from this moment on, before the endpoint's own programs are attached below.
    policy_plugin.apply(root, endpoint_id, pol, addresses=[a.ip for a in old_spec.addresses])
    try:
        specstore.replace(spec_path, new_spec)
        if not had_policy:
            eng.upgrade([endpoint_id])
    except BaseException:
        specstore.replace(spec_path, old_spec)
        if had_policy:
            policy_plugin.apply(root, endpoint_id, old_spec.options["policy"])
        else:
            policy_plugin.policy_maps(root).remove(endpoint_id)
        raise
    return pol



@policy.command("remove")
@click.argument("endpoint_id")
@click.pass_context
def policy_remove(ctx, endpoint_id) -> None:
    """Take ENDPOINT_ID's policy away: its policy programs are detached, its slot and addresses
    leave the policy maps, and its spec no longer carries one.  Afterwards every packet to and
    from the endpoint passes (as for an endpoint created without a policy)."""
    if _remove_policy(engine_for(ctx), endpoint_id, policy_plugin):
        click.echo(f"policy of endpoint {endpoint_id} removed")
    else:
        click.echo(f"endpoint {endpoint_id} has no policy; nothing to remove")


def _remove_policy(eng, endpoint_id: str, policy_plugin) -> bool:
    """The reverse of :func:`_apply_policy`: spec first, then the chain without the policy
    programs (an in-place upgrade), then the maps.  The programs keep judging by the old
    policy until they are detached, so nothing passes early; a failure puts the spec back."""
    import attrs

    from nkframe import specstore

    ep = eng.get_endpoint(endpoint_id)
    old_spec = ep.spec
    if old_spec.options.get("policy") is None:
        return False
    if eng.pm.get_plugin("policy") is None:
        raise errors.PluginError("the policy plugin is not loaded (NKFRAME_PLUGINS or NKFRAME_DISABLE_PLUGIN_AUTOLOAD leave it out)")
    options = {k: v for k, v in old_spec.options.items() if k != "policy"}
    new_spec = attrs.evolve(old_spec, options=options)
    spec_path = eng.layout.spec_path(endpoint_id)
    specstore.replace(spec_path, new_spec)
    try:
        eng.upgrade([endpoint_id])
    except BaseException:
        specstore.replace(spec_path, old_spec)
        raise
    policy_plugin.policy_maps(str(eng.layout.root)).remove(endpoint_id)
    return True
