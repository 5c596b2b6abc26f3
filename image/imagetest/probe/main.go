// Command probe is a static test program that tests put in container
// images: "info" prints, as one JSON line, what it sees of its world
// (arguments, environment, working directory, user, groups, host name,
// capabilities, and the files named by $PROBE_FILES), after writing the
// file $PROBE_WRITE if set, then stays if $PROBE_STAY is set; "serve"
// answers HTTP on $PORT; "alloc" allocates memory until it is killed;
// "tick" prints a line every 20 ms; "sleep" prints "sleeping". All but
// "alloc" exit 0 on SIGTERM.
package main

import (
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"github.com/meridian-run/meridian/image/imagetest/probeinfo"
)

func main() {
	mode := "info"
	if len(os.Args) > 1 {
		mode = os.Args[1]
	}
	switch mode {
	case "info":
		if p := os.Getenv("PROBE_WRITE"); p != "" {
			if err := os.WriteFile(p, []byte("written"), 0o644); err != nil {
				fmt.Fprintln(os.Stderr, "probe:", err)
			}
		}
		in := probeinfo.Info{Args: os.Args, Env: os.Environ(), UID: os.Getuid(), GID: os.Getgid(), Pid: os.Getpid(),
			Status: map[string]string{}, Files: map[string]string{}}
		in.Cwd, _ = os.Getwd()
		in.Groups, _ = os.Getgroups()
		in.Hostname, _ = os.Hostname()
		if b, err := os.ReadFile("/proc/self/status"); err == nil {
			for _, l := range strings.Split(string(b), "\n") {
				k, v, ok := strings.Cut(l, ":")
				if ok && (strings.HasPrefix(k, "Cap") || k == "NoNewPrivs") {
					in.Status[k] = strings.TrimSpace(v)
				}
			}
		}
		for _, f := range strings.Split(os.Getenv("PROBE_FILES"), ",") {
			if f == "" {
				continue
			}
			b, err := os.ReadFile(f)
			if err != nil {
				in.Files[f] = "error: " + err.Error()
			} else {
				in.Files[f] = string(b)
			}
		}
		b, _ := json.Marshal(in)
		fmt.Println(string(b))
		if os.Getenv("PROBE_STAY") != "" {
			waitTerm()
		}
	case "serve":
		http.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) { fmt.Fprintln(w, "ok") })
		go func() {
			if err := http.ListenAndServe(":"+os.Getenv("PORT"), nil); err != nil {
				fmt.Fprintln(os.Stderr, err)
				os.Exit(1)
			}
		}()
		waitTerm()
	case "alloc":
		for {
			b := make([]byte, 4<<20)
			for i := range b {
				b[i] = 1
			}
			hoard = append(hoard, b)
			time.Sleep(time.Millisecond)
		}
	case "tick":
		go func() {
			for i := 0; ; i++ {
				fmt.Printf("tick %d\n", i)
				time.Sleep(20 * time.Millisecond)
			}
		}()
		waitTerm()
	case "sleep":
		fmt.Println("sleeping")
		waitTerm()
	default:
		fmt.Fprintln(os.Stderr, "probe: unknown mode", mode)
		os.Exit(2)
	}
}

// hoard keeps what "alloc" allocates.
var hoard [][]byte

// waitTerm returns, and the program exits 0, on SIGTERM.
func waitTerm() {
	c := make(chan os.Signal, 1)
	signal.Notify(c, syscall.SIGTERM)
	<-c
	fmt.Println("got SIGTERM")
	os.Exit(0)
}
