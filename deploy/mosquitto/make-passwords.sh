#!/bin/sh
# Create the mosquitto password file for hubctl's users (no secret is ever committed).
# Usage: make-passwords.sh PASSWD_FILE
# Passwords come from the environment: HUBCTL_MQTT_PASSWORD (user hubctl, the same variable the
# service reads), OPERATOR_PASSWORD (user operator), VIEWER_PASSWORD (user viewer).
# mosquitto_passwd stores salted hashes (PBKDF2-SHA512) only.
set -eu
file=${1:?usage: make-passwords.sh PASSWD_FILE}
: "${HUBCTL_MQTT_PASSWORD:?set HUBCTL_MQTT_PASSWORD}"
: "${OPERATOR_PASSWORD:?set OPERATOR_PASSWORD}"
: "${VIEWER_PASSWORD:?set VIEWER_PASSWORD}"
umask 077
: > "$file"
mosquitto_passwd -b "$file" hubctl "$HUBCTL_MQTT_PASSWORD"
mosquitto_passwd -b "$file" operator "$OPERATOR_PASSWORD"
mosquitto_passwd -b "$file" viewer "$VIEWER_PASSWORD"
echo "wrote $file; point password_file in mosquitto.conf at it and reload mosquitto (SIGHUP)"
