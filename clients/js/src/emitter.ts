/** A listener removal handle. */
export type Unsubscribe = () => void;

type Listener = (arg: any) => void;

/**
 * A minimal typed event emitter. A listener that throws does not stop the
 * others; the error is reported asynchronously (like a DOM event handler).
 */
export class Emitter<M extends object> {
  private listeners = new Map<string, Set<Listener>>();

  on<K extends keyof M & string>(name: K, fn: (arg: M[K]) => void): Unsubscribe;
  on(name: string, fn: Listener): Unsubscribe;
  on(name: string, fn: Listener): Unsubscribe {
    let set = this.listeners.get(name);
    if (!set) this.listeners.set(name, (set = new Set()));
    set.add(fn);
    return () => this.off(name, fn);
  }

  once<K extends keyof M & string>(name: K, fn: (arg: M[K]) => void): Unsubscribe {
    const off = this.on(name, (arg: M[K]) => {
      off();
      fn(arg);
    });
    return off;
  }

  off(name: string, fn: Listener): void {
    const set = this.listeners.get(name);
    if (!set) return;
    set.delete(fn);
    if (set.size === 0) this.listeners.delete(name);
  }

  protected emit(name: string, arg: unknown): void {
    const set = this.listeners.get(name);
    if (!set) return;
    for (const fn of [...set]) {
      try {
        fn(arg);
      } catch (err) {
        setTimeout(() => {
          throw err;
        }, 0);
      }
    }
  }
}
