import { fileURLToPath } from "node:url";

/** The repository root (this file is packages/infra-checks/src/paths.ts). */
export const REPO_ROOT = fileURLToPath(new URL("../../../", import.meta.url));
export const INFRA = `${REPO_ROOT}infra/`;
export const K8S = `${INFRA}k8s/`;
export const DOCKER = `${INFRA}docker/`;
export const K6 = `${REPO_ROOT}k6/`;
export const FIXTURES = fileURLToPath(new URL("./fixtures/", import.meta.url));
