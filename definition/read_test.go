package definition

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

// TestReadDocumentIsBounded: a regular file over the limit is refused
// before it is read (a sparse 64 GiB file), an endless source (/dev/zero)
// is read no further than one byte past the limit, and a file within it
// is read whole.
func TestReadDocumentIsBounded(t *testing.T) {
	dir := t.TempDir()
	huge := filepath.Join(dir, "huge.yaml")
	f, err := os.Create(huge)
	if err != nil {
		t.Fatal(err)
	}
	if err := f.Truncate(64 << 30); err != nil {
		t.Fatal(err)
	}
	f.Close()
	if _, err := ReadDocument(t.Context(), huge); err == nil || !strings.Contains(err.Error(), "more than the limit") {
		t.Fatalf("64 GiB file: %v; want it refused for its size", err)
	}
	if _, err := ReadDocument(t.Context(), "/dev/zero"); err == nil || !strings.Contains(err.Error(), "more than the limit") {
		t.Fatalf("/dev/zero: %v; want it refused past the limit", err)
	}
	ok := filepath.Join(dir, "ok.yaml")
	os.WriteFile(ok, []byte("name: web\n"), 0o600)
	if b, err := ReadDocument(t.Context(), ok); err != nil || string(b) != "name: web\n" {
		t.Fatalf("small file: %q, %v", b, err)
	}
}

// TestReadDocumentStopsWithItsContext: a read blocked on a source that
// never sends (a FIFO with a silent writer) ends when the context does,
// as Ctrl-C ends the command line's.
func TestReadDocumentStopsWithItsContext(t *testing.T) {
	fifo := filepath.Join(t.TempDir(), "fifo")
	if err := syscall.Mkfifo(fifo, 0o600); err != nil {
		t.Fatal(err)
	}
	// A writer that holds the FIFO open and writes nothing (O_RDWR opens
	// a FIFO without waiting for the other side, on Linux).
	w, err := os.OpenFile(fifo, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer w.Close()
	ctx, cancel := context.WithCancel(t.Context())
	done := make(chan error, 1)
	go func() {
		_, err := ReadDocument(ctx, fifo)
		done <- err
	}()
	select {
	case err := <-done:
		t.Fatalf("the read ended before its context: %v", err)
	case <-time.After(200 * time.Millisecond):
	}
	cancel()
	select {
	case err := <-done:
		if !errors.Is(err, context.Canceled) {
			t.Fatalf("canceled read: %v, want context.Canceled", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("the read did not end within 10s of its context")
	}
}
