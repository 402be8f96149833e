# -*- coding: utf-8 -*-
# Copyright (c) celeryops.fleet contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Every role's meta/argument_specs.yml and defaults/main.yml say the same thing."""

import os
import re

import pytest
import yaml

ROLES = os.path.join(os.path.dirname(os.path.abspath(__file__)), '..', '..', '..', 'roles')
# A setting that falls back to its deprecated name, else to a literal: "{{ old_name | default(value) }}".
RENAMED = re.compile(r"^\{\{ (\w+) \| default\(('[^']*'|-?\d+|true|false|\[\]|\{\})\) \}\}$")
NAMES = sorted(name for name in os.listdir(ROLES) if os.path.isdir(os.path.join(ROLES, name)))


def load(role, path):
    with open(os.path.join(ROLES, role, path)) as handle:
        return yaml.safe_load(handle) or {}


def documented(role):
    """option name -> spec, over every entry point of the role."""
    options = {}
    for entry in load(role, 'meta/argument_specs.yml')['argument_specs'].values():
        options.update(entry.get('options', {}))
    return options


def test_every_role_is_checked():
    assert NAMES == ['beat', 'flower', 'supervisor', 'worker']


@pytest.mark.parametrize('role', NAMES)
def test_every_default_is_documented_with_the_same_value(role):
    options = documented(role)
    for name, value in load(role, 'defaults/main.yml').items():
        assert name in options, '%s: %s is in defaults/main.yml but not in meta/argument_specs.yml' % (role, name)
        renamed = RENAMED.match(value) if isinstance(value, str) else None
        if renamed and 'Deprecated alias of O(%s)' % name in str(options.get(renamed.group(1), {}).get('description')):
            # The old name's value, else the default: the spec documents that default ('' stands for unset).
            default = yaml.safe_load(renamed.group(2))
            documented_default = options[name].get('default', '' if default == '' else None)
            assert documented_default == default, '%s: %s default differs' % (role, name)
        elif isinstance(value, str) and '{{' in value:
            # A computed default: the spec describes it in words and gives no literal default.
            assert 'default' not in options[name], '%s: %s' % (role, name)
        else:
            assert options[name].get('default') == value, '%s: %s default differs' % (role, name)


@pytest.mark.parametrize('role', NAMES)
def test_every_documented_default_is_in_defaults(role):
    defaults = load(role, 'defaults/main.yml')
    for name, spec in documented(role).items():
        if 'default' in spec:
            assert name in defaults, '%s: %s has a spec default but none in defaults/main.yml' % (role, name)
        if spec.get('required'):
            assert name not in defaults, '%s: %s is required yet has a default' % (role, name)
