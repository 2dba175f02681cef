# Shared by compare.sh and cluster-compare.sh (sourced, not run): checks
# that the binaries and peers they need are there, installing Socket.IO's
# packages when missing. Expects HERALD, BENCH, HERE, TARGETS and SOCKUDO.
check_prerequisites() {
  [ -x "$HERALD" ] && [ -x "$BENCH" ] || {
    echo "build first: cargo build --release -p herald -p herald-bench" >&2
    exit 1
  }
  case " $TARGETS " in *" socketio "*)
    [ -d "$HERE/socketio/node_modules/@socket.io/redis-adapter" ] ||
      (cd "$HERE/socketio" && npm ci --no-audit --no-fund)
    ;;
  esac
  case " $TARGETS " in *" sockudo "*)
    [ -n "$SOCKUDO" ] && [ -x "$SOCKUDO" ] || {
      echo "sockudo not found: cargo install sockudo, or SOCKUDO=/path/to/sockudo" >&2
      exit 1
    }
    ;;
  esac
}
