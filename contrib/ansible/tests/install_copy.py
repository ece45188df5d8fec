"""The role's package copy, checked from its task file (run.sh runs this; the install itself is
not run in the test, as it would install a package on this machine).

The .deb must go into a fresh folder made by ansible.builtin.tempfile (state: directory), kept
root's only (mode 0700), with the copy and apt's path inside it, and the folder removed in an
`always:` section; no task may name /var/tmp. Exit 1 with the reason otherwise.
Usage: python install_copy.py roles/gpt/tasks/install.yml
"""
import sys

import yaml


def tasks(items):
    """Every task, blocks and their always/rescue sections flattened, with the section name."""
    for t in items or []:
        if "block" in t:
            yield from tasks(t["block"])
            for section in ("rescue", "always"):
                for inner in tasks(t.get(section)):
                    yield inner[0], section if inner[1] == "task" else inner[1]
        else:
            yield t, "task"


def main(path):
    with open(path, encoding="utf-8") as f:
        text = f.read()
    found = list(tasks(yaml.safe_load(text)))
    if "/var/tmp" in "".join(str(t) for t, _ in found):
        return "a task still names /var/tmp"
    made = [t for t, _ in found if t.get("ansible.builtin.tempfile", {}).get("state") == "directory"]
    if len(made) != 1 or "register" not in made[0]:
        return "no ansible.builtin.tempfile task with state: directory and a register"
    folder = "{{ %s.path }}" % made[0]["register"]
    modes = [t["ansible.builtin.file"] for t, _ in found if "ansible.builtin.file" in t]
    if not any(m.get("path") == folder and str(m.get("mode")) == "0700" and m.get("owner") == "root" for m in modes):
        return f"the folder {folder} is not made root's only (owner root, mode 0700)"
    copies = [t["ansible.builtin.copy"] for t, _ in found if "ansible.builtin.copy" in t]
    if not copies or not all(str(c.get("dest", "")).startswith(folder + "/") for c in copies):
        return f"the package is not copied into {folder}/"
    local = [t["ansible.builtin.apt"] for t, _ in found
             if "ansible.builtin.apt" in t and "https?://" not in str(t.get("when", ""))]
    if not local or not all(str(a.get("deb", "")).startswith(folder + "/") for a in local):
        return f"apt does not install the copy in {folder}/"
    removed = [t for t, section in found if section == "always" and
               t.get("ansible.builtin.file", {}).get("path") == folder and
               t["ansible.builtin.file"].get("state") == "absent"]
    if not removed:
        return f"{folder} is not removed in an always: section"
    return None


if __name__ == "__main__":
    why = main(sys.argv[1])
    if why:
        print(f"install.yml: {why}", file=sys.stderr)
        sys.exit(1)
