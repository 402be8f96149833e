"""Run one command and append its peak resident set size (kB) to a file: the largest RSS of that process
and of any it waited for (getrusage(RUSAGE_CHILDREN).ru_maxrss), not of this wrapper.

    python bench/maxrss.py OUTFILE LABEL COMMAND [ARG...]

bench/memory.py makes Ansible run modules through it: a two-line interpreter script
(`exec python bench/maxrss.py OUTFILE module <venv python> "$@"`) set as ANSIBLE_PYTHON_INTERPRETER, so the
process measured is the module process exactly as Ansible starts it (AnsiballZ and the module, nothing of
ansible-playbook). Standard library only; stdin, stdout and stderr pass through.
"""

import resource
import subprocess
import sys


def main():
    outfile, label, argv = sys.argv[1], sys.argv[2], sys.argv[3:]
    returncode = subprocess.call(argv)
    peak_kb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss  # Linux: kilobytes
    with open(outfile, 'a') as f:
        f.write('%s %d %d\n' % (label, peak_kb, returncode))
    return returncode


if __name__ == '__main__':
    sys.exit(main())
