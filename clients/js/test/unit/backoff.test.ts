import { describe, expect, it } from 'vitest';
import { backoffDelay, decodeJwtPayload, tokenExpiryMs } from '../../src/index.js';
import { jwt } from './fakes.js';

describe('backoffDelay (full jitter)', () => {
  it('stays within [0, min(max, initial * 2^n)] for every attempt', () => {
    const opts = { initialMs: 100, maxMs: 5000 };
    for (let n = 0; n < 20; n++) {
      const cap = Math.min(5000, 100 * 2 ** n);
      for (let i = 0; i < 200; i++) {
        const d = backoffDelay(n, opts);
        expect(d).toBeGreaterThanOrEqual(0);
        expect(d).toBeLessThanOrEqual(cap);
      }
      expect(backoffDelay(n, opts, () => 0)).toBe(0);
      expect(backoffDelay(n, opts, () => 0.999999)).toBe(Math.floor(0.999999 * cap));
    }
  });

  it('is jittered, not fixed', () => {
    const seen = new Set<number>();
    for (let i = 0; i < 50; i++) seen.add(backoffDelay(6, { initialMs: 100, maxMs: 10_000 }));
    expect(seen.size).toBeGreaterThan(10);
  });

  it('defaults to 500 ms growing to a 30 s cap', () => {
    expect(backoffDelay(0, {}, () => 0.999999)).toBe(499);
    expect(backoffDelay(30, {}, () => 0.999999)).toBe(29_999);
    expect(backoffDelay(1000, {}, () => 0.5)).toBe(15_000);
  });
});

describe('JWT decoding (no verification)', () => {
  it('reads exp and the payload', () => {
    const t = jwt({ sub: 'ü42', exp: 1_900_000_000 });
    expect(decodeJwtPayload(t)).toEqual({ sub: 'ü42', exp: 1_900_000_000 });
    expect(tokenExpiryMs(t)).toBe(1_900_000_000_000);
  });
  it('tolerates non-JWT tokens', () => {
    expect(decodeJwtPayload('opaque')).toBeUndefined();
    expect(tokenExpiryMs('a.b.c')).toBeUndefined();
    expect(tokenExpiryMs(jwt({ sub: 'x' }))).toBeUndefined();
  });
});
