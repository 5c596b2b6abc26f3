package driver

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func TestParseProcStat(t *testing.T) {
	line := "4242 (we)ird (name) S 1 4242 4242 0 -1 4194560 100 0 0 0 7 3 2 1 20 0 1 0 987654 1000000 250 18446744073709551615 1 1 0 0 0 0 0 0 0 0 0 0 17 0 0 0 0 0 0\n"
	st, err := parseProcStat([]byte(line))
	if err != nil {
		t.Fatal(err)
	}
	if st.State != 'S' || st.PPid != 1 || st.CPUTicks != 13 || st.StartTime != 987654 || st.RSSPages != 250 {
		t.Fatalf("parsed %+v", st)
	}
	if _, err := parseProcStat([]byte("12 (x")); err == nil {
		t.Fatal("malformed stat accepted")
	}
	self, err := readProcStat(os.Getpid())
	if err != nil || self.StartTime == 0 || self.State == 'Z' {
		t.Fatalf("own stat %+v, %v", self, err)
	}
	if ok, _ := sameProcess(os.Getpid(), self.StartTime); !ok {
		t.Fatal("sameProcess false for this process")
	}
	if ok, why := sameProcess(os.Getpid(), self.StartTime+1); ok || !strings.Contains(why, "reused") {
		t.Fatalf("sameProcess with wrong start time: %v %q", ok, why)
	}
}

func TestParseLogLine(t *testing.T) {
	e, err := ParseLogLine([]byte("2024-05-06T07:08:09.123456789Z stderr hello  world \n"))
	if err != nil {
		t.Fatal(err)
	}
	want := time.Date(2024, 5, 6, 7, 8, 9, 123456789, time.UTC)
	if !e.Time.Equal(want) || e.Stream != "stderr" || e.Text != "hello  world " {
		t.Fatalf("parsed %+v", e)
	}
	if e, err := ParseLogLine([]byte("2024-05-06T07:08:09.123456789Z stdout ")); err != nil || e.Text != "" {
		t.Fatalf("empty line: %+v %v", e, err)
	}
	for _, bad := range []string{"", "nonsense", "2024-05-06T07:08:09.123456789Z stdin x", "yesterday stdout x"} {
		if _, err := ParseLogLine([]byte(bad)); err == nil {
			t.Errorf("%q accepted", bad)
		}
	}
}

func TestCopyLinesPartialAndLong(t *testing.T) {
	old := partialLineWait
	partialLineWait = 50 * time.Millisecond
	t.Cleanup(func() { partialLineWait = old })

	path := filepath.Join(t.TempDir(), "out.log")
	l, err := openRotatingLog(path, 1<<20)
	if err != nil {
		t.Fatal(err)
	}
	r, w, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() { copyLines(l, "stdout", r); close(done) }()

	// A partial line shows up after partialLineWait without a newline.
	if _, err := w.WriteString("prompt> "); err != nil {
		t.Fatal(err)
	}
	waitLog(t, path, textIs("prompt> "))

	long := strings.Repeat("y", 40<<10)
	if _, err := w.WriteString("a\nb\n" + long + "\ntail"); err != nil {
		t.Fatal(err)
	}
	w.Close()
	<-done
	l.close()
	var texts []string
	for _, e := range readLog(t, path) {
		texts = append(texts, e.Text)
	}
	want := []string{"prompt> ", "a", "b", long[:16<<10], long[:16<<10], long[:8<<10], "tail"}
	if len(texts) != len(want) {
		t.Fatalf("got %d entries, want %d", len(texts), len(want))
	}
	for i := range want {
		if texts[i] != want[i] {
			t.Fatalf("entry %d has %d bytes, want %d", i, len(texts[i]), len(want[i]))
		}
	}
}

func TestRotatingLogBound(t *testing.T) {
	path := filepath.Join(t.TempDir(), "out.log")
	const bound = 1024
	l, err := openRotatingLog(path, bound)
	if err != nil {
		t.Fatal(err)
	}
	for range 100 {
		if err := l.writeLine("stdout", []byte(strings.Repeat("z", 100))); err != nil {
			t.Fatal(err)
		}
	}
	// A line longer than the bound is cut to fit.
	if err := l.writeLine("stderr", []byte(strings.Repeat("w", 5000))); err != nil {
		t.Fatal(err)
	}
	l.close()
	for _, p := range []string{path, path + ".1"} {
		fi, err := os.Stat(p)
		if err != nil {
			t.Fatal(err)
		}
		if fi.Size() > bound {
			t.Errorf("%s has %d bytes, bound %d", p, fi.Size(), bound)
		}
	}
	entries := readLog(t, path)
	if last := entries[len(entries)-1]; last.Stream != "stderr" || len(last.Text) == 0 {
		t.Errorf("last entry %+v", last)
	}
	// Reopening a log over the bound rotates it at once.
	if err := os.WriteFile(path, []byte(strings.Repeat("q", 2*bound)), 0o644); err != nil {
		t.Fatal(err)
	}
	l, err = openRotatingLog(path, bound)
	if err != nil {
		t.Fatal(err)
	}
	l.close()
	if fi, _ := os.Stat(path); fi.Size() != 0 {
		t.Errorf("oversized log not rotated on open: %d bytes", fi.Size())
	}
}
