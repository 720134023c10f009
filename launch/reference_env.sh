# Shared by the PyTorch reference installers (install_mlpf_reference.sh, install_salt_reference.sh);
# source it. A reference environment is a Python 3.11 venv holding exactly its lock
# (launch/locks/NAME.txt, made by `make lock` from NAME.in): every package pinned, installed with
# --no-deps, so nothing is resolved again at install time.

# python311 OVERRIDE: the interpreter to use: OVERRIDE if given, else pyenv's newest 3.11 (the Makefile
# selects 3.12 for pyenv's shims), else python3.11 on PATH. Exits naming the problem if it is no 3.11.
python311() {
  local py=${1:-}
  if [[ -z $py ]] && command -v pyenv >/dev/null 2>&1; then
    local v
    v=$(pyenv versions --bare 2>/dev/null | grep -E '^3\.11\.[0-9]+$' | tail -n1 || true)
    [[ -n $v ]] && py="$(pyenv root)/versions/$v/bin/python3.11"
  fi
  py=${py:-python3.11}
  if ! "$py" -c 'import sys; assert sys.version_info[:2] == (3, 11)' 2>/dev/null; then
    echo "reference environment: needs Python 3.11; '$py' is not one (name one in the installer's" \
      "*_PYTHON variable)" >&2
    exit 1
  fi
  echo "$py"
}

# install_locked ENV_DIR LOCK PYTHON: the venv ENV_DIR (made with PYTHON if missing) with exactly LOCK.
install_locked() {
  local env_dir=$1 lock=$2 py=$3
  [[ -x "$env_dir/bin/python" ]] || "$py" -m venv "$env_dir"
  echo '*' >"$env_dir/.gitignore" # never committed, wherever it lives
  "$env_dir/bin/python" -m pip install -q --disable-pip-version-check --no-deps -r "$lock"
}

# reference_env NAME ENV_DIR LOCK PYTHON [TORCH]: ENV_DIR holds exactly LOCK, or LOCK with its torch
# replaced by TORCH (a pip requirement, installed with its dependencies, e.g. a CUDA build). Nothing is
# done when ENV_DIR's stamp names this lock and TORCH and the caller's `check` passes; after an install
# `check` must pass, or the install fails naming NAME and printing what the caller's `diagnose` says.
reference_env() {
  local name=$1 env_dir=$2 lock=$3 py_override=$4 torch=${5:-}
  local stamp="$env_dir/.installed" want py
  want="$(sha256sum "$lock" | cut -d' ' -f1) $torch"
  if [[ -f $stamp && "$(cat "$stamp")" == "$want" ]] && check; then
    echo "$name: $env_dir is ready"
    return 0
  fi
  py=$(python311 "$py_override")
  if [[ -n $torch ]]; then
    grep -v '^torch==' "$lock" >"$env_dir.lock.tmp"
    install_locked "$env_dir" "$env_dir.lock.tmp" "$py"
    rm "$env_dir.lock.tmp"
    "$env_dir/bin/python" -m pip install -q --disable-pip-version-check "$torch"
  else
    install_locked "$env_dir" "$lock" "$py"
  fi
  if ! check; then
    echo "$name: $env_dir does not pass its check:" >&2
    diagnose >&2 || true
    exit 1
  fi
  echo "$want" >"$stamp"
  echo "$name: $env_dir ready ($("$env_dir/bin/python" -c 'import torch; print("torch", torch.__version__)'))"
}
