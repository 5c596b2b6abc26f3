// Package e2e holds Meridian's end-to-end tests: they build the meridian
// binary, its instance shim and the demo app, start a whole installation
// with `meridian dev`'s machinery (every component a real process), drive
// it through the real CLI and APIs, and kill components like real
// failures do.
package e2e
