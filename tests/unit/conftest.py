# -*- coding: utf-8 -*-
# Copyright (c) celeryops.fleet contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Make ``ansible_collections.celeryops.fleet`` importable from this work tree.

The plugins import each other as ``ansible_collections.celeryops.fleet.plugins...``, so a
directory holding ``ansible_collections/celeryops/fleet`` (this repository) must be on
sys.path before the test modules are collected. In order of preference:

1. the work tree already sits at ``.../ansible_collections/celeryops/fleet`` (ansible-test);
2. an entry of ANSIBLE_COLLECTIONS_PATH already links or holds it (scripts/bootstrap.sh);
3. the first entry of ANSIBLE_COLLECTIONS_PATH, given a symlink to the work tree if it has
   no celeryops.fleet at all;
4. a temporary directory of this session with that symlink, removed at the end.

A celeryops.fleet found elsewhere that is not this work tree (an installed copy) is never
used: the tests must exercise the code beside them.
"""

import os
import shutil
import sys
import tempfile

ROOT = os.path.realpath(os.path.join(os.path.dirname(os.path.abspath(__file__)), '..', '..'))
_PARTS = ('ansible_collections', 'celeryops', 'fleet')
_TEMP_DIRS = []


def _holds_this_tree(base):
    return os.path.realpath(os.path.join(base, *_PARTS)) == ROOT


def _link(base):
    """Symlink base/ansible_collections/celeryops/fleet -> ROOT; True when done."""
    parent = os.path.join(base, *_PARTS[:2])
    try:
        os.makedirs(parent, exist_ok=True)
        os.symlink(ROOT, os.path.join(parent, _PARTS[2]))
    except OSError:
        return _holds_this_tree(base)  # another process (xdist) may have won the race
    return True


def collections_dir():
    """A directory that holds ansible_collections/celeryops/fleet -> this work tree."""
    if ROOT.split(os.sep)[-3:] == list(_PARTS):
        return os.sep.join(ROOT.split(os.sep)[:-3]) or os.sep
    entries = [e for e in os.environ.get('ANSIBLE_COLLECTIONS_PATH', '').split(os.pathsep) if e]
    for entry in entries:
        if _holds_this_tree(entry):
            return entry
    if entries and not os.path.lexists(os.path.join(entries[0], *_PARTS)) and _link(entries[0]):
        return entries[0]
    base = tempfile.mkdtemp(prefix='celeryops-fleet-unit-')
    _TEMP_DIRS.append(base)
    if not _link(base):
        raise RuntimeError('cannot create %s' % os.path.join(base, *_PARTS))
    return base


def pytest_configure(config):
    path = collections_dir()
    if path in sys.path:
        sys.path.remove(path)
    sys.path.insert(0, path)


def pytest_unconfigure(config):
    for base in _TEMP_DIRS:
        shutil.rmtree(base, ignore_errors=True)
