import type { TestProject } from 'vitest/node';
import { ensureBinary, startHerald, type Node } from './herald.js';

let node: Node | undefined;

export async function setup(project: TestProject): Promise<void> {
  ensureBinary();
  node = await startHerald();
  project.provide('heraldUrl', node.url);
}

export async function teardown(): Promise<void> {
  await node?.stop();
}

declare module 'vitest' {
  export interface ProvidedContext {
    heraldUrl: string;
  }
}
