"""Stand-in for the get-pip.py that `ansible-test --venv` downloads from a host this
machine cannot reach: bootstrap pip from the interpreter's own ensurepip, then install
what ansible-test asked for (pinned pip, setuptools, wheel) from the package index.

scripts/test copies it to ~/.ansible/test/cache/get_pip_<version>.py.
"""

import subprocess
import sys

# get-pip's own flags (pip install knows neither): we install only what is named anyway.
GET_PIP_ONLY = {'--no-setuptools', '--no-wheel'}

subprocess.check_call([sys.executable, '-m', 'ensurepip', '--upgrade'], stdout=subprocess.DEVNULL)
args = [arg for arg in sys.argv[1:] if arg not in GET_PIP_ONLY]
sys.exit(subprocess.call([sys.executable, '-m', 'pip', 'install', '--upgrade', '--force-reinstall'] + args))
