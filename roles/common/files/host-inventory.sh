#!/bin/sh
# One line per installed package, system user ("user:NAME"), group ("group:NAME") and
# path under /etc and /var/lib ("path:PATH"; dpkg's and apt's own records left out):
# what packages.yml compares before and after an install, to record what it added.
dpkg-query -W -f '${db:Status-Abbrev} ${Package}\n' | awk '$1 == "ii" {print $2}'
getent passwd | cut -d: -f1 | sed 's/^/user:/'
getent group | cut -d: -f1 | sed 's/^/group:/'
find /etc /var/lib -xdev \( -path /var/lib/dpkg -o -path /var/lib/apt \) -prune -o -print |
	sed 's/^/path:/'
