package cli

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

// TestValidateFileIsBounded: `validate -f` refuses an endless source
// (/dev/zero) after 1 MiB and a huge file by its size, and stops reading a
// silent source when its context ends (Ctrl-C).
func TestValidateFileIsBounded(t *testing.T) {
	code, _, errOut := run(t, "validate", "-f", "/dev/zero")
	if code != 1 || !strings.Contains(errOut, "-f /dev/zero") || !strings.Contains(errOut, "more than the limit") {
		t.Fatalf("validate -f /dev/zero: exit %d %q", code, errOut)
	}
	dir := t.TempDir()
	huge := filepath.Join(dir, "huge.yaml")
	f, _ := os.Create(huge)
	f.Truncate(8 << 30)
	f.Close()
	if code, _, errOut := run(t, "validate", "-f", huge); code != 1 || !strings.Contains(errOut, "more than the limit") {
		t.Fatalf("validate -f of an 8 GiB file: exit %d %q", code, errOut)
	}

	fifo := filepath.Join(dir, "fifo")
	if err := syscall.Mkfifo(fifo, 0o600); err != nil {
		t.Fatal(err)
	}
	w, err := os.OpenFile(fifo, os.O_RDWR, 0) // a writer that sends nothing
	if err != nil {
		t.Fatal(err)
	}
	defer w.Close()
	ctx, cancel := context.WithCancel(t.Context())
	done := make(chan int, 1)
	var out, errb bytes.Buffer
	go func() { done <- Main(ctx, []string{"validate", "-f", fifo}, &out, &errb) }()
	select {
	case code := <-done:
		t.Fatalf("validate of a silent FIFO ended by itself: exit %d %s", code, errb.String())
	case <-time.After(200 * time.Millisecond):
	}
	cancel() // what Ctrl-C does to the command line's context
	select {
	case code := <-done:
		if code != 1 || !strings.Contains(errb.String(), "context canceled") {
			t.Fatalf("canceled validate: exit %d %q", code, errb.String())
		}
	case <-time.After(10 * time.Second):
		t.Fatal("validate did not stop within 10s of Ctrl-C")
	}
}
