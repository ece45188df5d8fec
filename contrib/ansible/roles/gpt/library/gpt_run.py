#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: 2026 The gpt developers
# License: MIT OR Apache-2.0
"""Ansible module of the gpt role: runs gpt full, reset or check with --json."""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

DOCUMENTATION = r"""
---
module: gpt_run
short_description: Run gpt full, gpt reset or gpt check and report what gpt says
description:
  - Runs C(gpt full ... --yes --json), C(gpt reset --yes --json) or C(gpt check --json) and
    reads C(changed), C(phase) and C(reboot_required) from gpt's JSON.
  - A non-zero exit fails the task with gpt's own reason (its JSON, or its C(error:) line on
    stderr when it printed no JSON), never with a JSON parse error.
  - In check mode, C(full) and C(reset) run C(--dry-run) instead and change nothing; with
    C(--diff) the task shows gpt's unified diff of every file it would change (also in a
    normal run, taken from a dry run just before).
options:
  command:
    description: The gpt command.
    type: str
    required: true
    choices: [full, reset, check]
  binary:
    description: The gpt executable.
    type: path
    default: /usr/bin/gpt
  root:
    description: The host tree gpt works on (C(--root)); C(/) is the host itself.
    type: path
    default: /
  vendor:
    description: The GPU vendor for C(full) (nvidia, amd, intel or a hex id).
    type: str
    default: ""
  devices:
    description: PCI addresses for C(full) (C(--device ADDR) each).
    type: list
    elements: str
    default: []
  options:
    description: Further options for the command, such as C(--no-deps) or C(--force).
    type: list
    elements: str
    default: []
author:
  - The gpt developers
"""

EXAMPLES = r"""
- name: Configure passthrough of the NVIDIA GPU
  gpt_run:
    command: full
    vendor: nvidia
"""

RETURN = r"""
changed:
  description: gpt's own C(changed) (in check mode, whether the dry run found something to do).
  returned: always
  type: bool
phase:
  description: C(iommu) when the IOMMU was off and gpt only added its arguments, else C(vfio).
  returned: command is full
  type: str
reboot_required:
  description: gpt's C(reboot_required).
  returned: command is full or reset
  type: bool
gpt:
  description: gpt's whole JSON document.
  returned: when gpt printed one
  type: dict
failed_checks:
  description: The checks of C(gpt check) whose status is fail, as C(name: detail).
  returned: command is check
  type: list
  elements: str
cmd:
  description: The command line that ran.
  returned: always
  type: list
  elements: str
"""

import json
import os

from ansible.module_utils.basic import AnsibleModule


def reason(rc, stderr):
    """gpt's reason for a failure: its `error:` line(s), else the end of stderr."""
    lines = [line.strip() for line in stderr.splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("error:")]
    if errors:
        return " ".join(errors)
    if lines:
        return " ".join(lines[-3:])
    return "gpt exited %d and said nothing" % rc


def parse(stdout):
    """gpt's JSON document, or None when stdout holds no (single) document."""
    text = stdout.strip()
    if not text:
        return None
    try:
        doc = json.loads(text)
    except ValueError:
        return None
    return doc if isinstance(doc, dict) else None


def main():
    module = AnsibleModule(
        argument_spec=dict(
            command=dict(type="str", required=True, choices=["full", "reset", "check"]),
            binary=dict(type="path", default="/usr/bin/gpt"),
            root=dict(type="path", default="/"),
            vendor=dict(type="str", default=""),
            devices=dict(type="list", elements="str", default=[]),
            options=dict(type="list", elements="str", default=[]),
        ),
        supports_check_mode=True,
    )
    p = module.params
    command = p["command"]
    if module.check_mode and not os.path.exists(p["binary"]):
        # A dry run of the install task installed nothing: there is no gpt to ask yet.
        module.warn("%s is not installed yet (check mode): gpt %s's plan cannot be shown"
                    % (p["binary"], command))
        module.exit_json(changed=command != "check", skipped_reason="gpt not installed")
    base = [p["binary"]]
    if p["root"] != "/":
        base += ["--root", p["root"]]
    args = [command]
    if command == "full":
        if p["vendor"]:
            args.append(p["vendor"])
        for d in p["devices"]:
            args += ["--device", d]
    args += p["options"]
    # gpt's messages are for people: no colours, and C so that they read the same everywhere.
    env = {"NO_COLOR": "1", "LC_ALL": "C"}

    def run(argv):
        return module.run_command(argv, environ_update=env)

    def fail(argv, rc, doc, stderr, **extra):
        module.fail_json(msg="gpt %s failed: %s" % (command, reason(rc, stderr)),
                         rc=rc, cmd=argv, gpt=doc, stderr=stderr, **extra)

    if command == "check":
        argv = base + args + ["--json"]
        rc, out, err = run(argv)
        doc = parse(out)
        failed = [
            "%s: %s" % (c.get("name"), c.get("detail"))
            for c in (doc or {}).get("checks", [])
            if c.get("status") == "fail"
        ]
        if rc != 0:
            if failed:
                module.fail_json(msg="gpt check failed: " + "; ".join(failed), rc=rc,
                                 cmd=argv, gpt=doc, failed_checks=failed)
            fail(argv, rc, doc, err, failed_checks=failed)
        module.exit_json(changed=False, cmd=argv, gpt=doc, failed_checks=failed)

    result = {}
    if module.check_mode or module._diff:
        # The plan: the diff (stdout of a plain dry run) and what would change (its JSON).
        dry = base + args + ["--dry-run"]
        rc, out, err = run(dry + ["--json"])
        doc = parse(out)
        if rc != 0:
            fail(dry + ["--json"], rc, doc, err)
        would = bool(doc and (doc.get("files") or doc.get("commands")))
        if module._diff and would:
            rc, text, err = run(dry)
            if rc != 0:
                fail(dry, rc, None, err)
            result["diff"] = {"prepared": text}
        if module.check_mode:
            module.exit_json(changed=would, cmd=dry, gpt=doc, phase=(doc or {}).get("phase"),
                             reboot_required=would, **result)

    argv = base + args + ["--yes", "--json"]
    rc, out, err = run(argv)
    doc = parse(out)
    if rc != 0:
        fail(argv, rc, doc, err)
    if doc is None:
        module.fail_json(msg="gpt %s exited 0 but printed no JSON document" % command,
                         rc=rc, cmd=argv, stdout=out, stderr=err)
    warnings = [line[len("warning:"):].strip() for line in err.splitlines()
                if line.startswith("warning:")]
    for w in warnings:
        module.warn("gpt: " + w)
    module.exit_json(changed=bool(doc.get("changed")), cmd=argv, gpt=doc,
                     phase=doc.get("phase"), reboot_required=bool(doc.get("reboot_required")),
                     **result)


if __name__ == "__main__":
    main()
