#!/usr/bin/env bash
# Makes the certificates of the gateway -> control service gRPC channel (mutual
# TLS: the control service accepts only a client certificate from this CA, and
# the gateway accepts only the control service's certificate with its name):
#
#   envoy/k8s/make-tls.sh [--out DIR] [--days N] [--name DNS_NAME]...
#     --out   where to write them (default envoy/k8s/tls, git-ignored)
#     --days  validity (default 365); re-run the script to rotate
#     --name  a DNS name of the control service's certificate (repeatable;
#             default: the Service's names in the keybrake namespace)
#
# It writes two directories, one per Secret kustomization.yaml generates:
#   DIR/control/{tls.crt,tls.key,ca.crt}  the control service's certificate and
#                                         key, and the CA its clients must come from
#   DIR/gateway/{tls.crt,tls.key,ca.crt}  the gateway's client certificate and key,
#                                         and the CA the control service's comes from
# One fresh CA signs both (extended key usage keeps them apart: serverAuth for
# the control service, clientAuth for the gateway). Its private key is not
# kept: nothing else can ever be signed by it, and rotating means running this
# again (both Secrets change, so both Deployments roll).
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
out=$root/envoy/k8s/tls days=365 names=()
while [ $# -gt 0 ]; do
  case $1 in
    --out) out=$2; shift 2 ;;
    --days) days=$2; shift 2 ;;
    --name) names+=("$2"); shift 2 ;;
    -h|--help) sed -n '2,20p' "$0"; exit 0 ;;
    *) echo "make-tls.sh: unknown argument $1" >&2; exit 2 ;;
  esac
done
[ ${#names[@]} -gt 0 ] || names=(keybrake-control.keybrake.svc.cluster.local keybrake-control.keybrake.svc
                                 keybrake-control.keybrake keybrake-control)
command -v openssl >/dev/null || { echo "make-tls.sh: needs openssl" >&2; exit 1; }

umask 077
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
mkdir -p "$out/control" "$out/gateway"

key() { openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$1" 2>/dev/null; }
serial() { echo "0x$(openssl rand -hex 16)"; }

key "$work/ca.key"
openssl req -x509 -new -key "$work/ca.key" -days "$days" -subj "/CN=Keybrake control channel CA $(openssl rand -hex 4)" \
  -addext "basicConstraints=critical,CA:TRUE,pathlen:0" -addext "keyUsage=critical,keyCertSign,cRLSign" \
  -out "$work/ca.crt"

# leaf NAME DIR EXTENSIONS
leaf() {
  key "$2/tls.key"
  openssl req -new -key "$2/tls.key" -subj "/CN=$1" -out "$work/$1.csr"
  printf '%s\n' "$3" > "$work/$1.ext"
  openssl x509 -req -in "$work/$1.csr" -CA "$work/ca.crt" -CAkey "$work/ca.key" -set_serial "$(serial)" \
    -days "$days" -extfile "$work/$1.ext" -out "$2/tls.crt" 2>/dev/null
  cp "$work/ca.crt" "$2/ca.crt"
}

san=$(printf 'DNS:%s,' "${names[@]}")
leaf keybrake-control "$out/control" "basicConstraints=critical,CA:FALSE
keyUsage=critical,digitalSignature
extendedKeyUsage=serverAuth
subjectAltName=${san%,}"
leaf keybrake-gateway "$out/gateway" "basicConstraints=critical,CA:FALSE
keyUsage=critical,digitalSignature
extendedKeyUsage=clientAuth
subjectAltName=DNS:keybrake-gateway"
chmod 600 "$out"/*/tls.key
echo "make-tls.sh: wrote $out/control and $out/gateway (valid $days days; names: ${names[*]})" >&2
