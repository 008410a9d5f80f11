import { afterAll } from "vitest";
import { runFileEnd } from "./helpers/scope.js";

// A setup file runs before every test file, so this hook belongs to each file's root suite; it is
// registered first, so it runs after the file's own afterAll hooks.
afterAll(runFileEnd);
