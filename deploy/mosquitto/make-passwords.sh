#!/bin/sh
# Create the mosquitto password files for hubctl's users (no secret is ever committed).
# Usage: make-passwords.sh DIR   (the directory of mosquitto.conf, e.g. /etc/mosquitto/hubctl)
# Writes DIR/passwd-hubctl (user hubctl: the loopback listener) and DIR/passwd (operator and
# viewer: the TLS listener); see mosquitto.conf for why the two listeners know different users.
# Passwords come from the environment: HUBCTL_MQTT_PASSWORD (user hubctl, the same variable the
# service reads), OPERATOR_PASSWORD (user operator), VIEWER_PASSWORD (user viewer).
# mosquitto_passwd stores salted hashes (PBKDF2-SHA512) only.
# mosquitto 2.0 reads the files after it has dropped to its own user (MOSQUITTO_USER, default
# mosquitto): they are made owner root (or whoever runs this), group that user's, mode 0640;
# without that user (a test, a container) they stay 0600 for the user running this.
set -eu
dir=${1:?usage: make-passwords.sh DIR}
: "${HUBCTL_MQTT_PASSWORD:?set HUBCTL_MQTT_PASSWORD}"
: "${OPERATOR_PASSWORD:?set OPERATOR_PASSWORD}"
: "${VIEWER_PASSWORD:?set VIEWER_PASSWORD}"
broker_user=${MOSQUITTO_USER:-mosquitto}
umask 077
install -d "$dir"
for name in passwd-hubctl passwd; do
    : > "$dir/$name.new"
done
mosquitto_passwd -b "$dir/passwd-hubctl.new" hubctl "$HUBCTL_MQTT_PASSWORD"
mosquitto_passwd -b "$dir/passwd.new" operator "$OPERATOR_PASSWORD"
mosquitto_passwd -b "$dir/passwd.new" viewer "$VIEWER_PASSWORD"
for name in passwd-hubctl passwd; do
    if group=$(id -gn "$broker_user" 2>/dev/null); then
        chgrp "$group" "$dir/$name.new"
        chmod 0640 "$dir/$name.new"
    fi
    mv -f "$dir/$name.new" "$dir/$name"
done
echo "wrote $dir/passwd-hubctl and $dir/passwd; reload mosquitto (SIGHUP) to use them"
