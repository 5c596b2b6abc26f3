// Package arch holds the tests that keep the architecture true: which
// package may import which (the one-way dependencies ARCHITECTURE.md
// lists), the rules that keep machines and edges independent of the
// global control plane, and a doc comment on every package. It has no
// code of its own.
package arch
