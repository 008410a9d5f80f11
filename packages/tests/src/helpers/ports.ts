// One implementation, in the harness package the bench uses too.
export { freePort } from "@chat/redis-cluster-harness";
