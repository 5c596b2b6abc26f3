// Command rss measures the resident memory of idle Meridian components, run
// as real processes of the meridian binary: the global control plane (on
// SQLite) and a region server (embedded etcd). It prints one line per
// component: its RSS after it has been idle for a while.
//
//	go build -o bin/meridian ./cmd/meridian && go run ./bench/rss -meridian bin/meridian
package main

import (
	"crypto/tls"
	"flag"
	"fmt"
	"log"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"time"
)

func main() {
	bin := flag.String("meridian", "bin/meridian", "the meridian binary")
	idle := flag.Duration("idle", 5*time.Second, "how long each component idles before it is measured")
	flag.Parse()
	dir, err := os.MkdirTemp("", "meridian-rss-")
	if err != nil {
		log.Fatal(err)
	}
	defer os.RemoveAll(dir)
	run(*bin, dir, "pki", "init", "--dir", filepath.Join(dir, "pki"))
	run(*bin, dir, "pki", "region", "--dir", filepath.Join(dir, "pki"), "--region", "fra")

	api := freeAddr()
	measure(*bin, "global (SQLite, idle)", *idle, "http://"+api+"/healthz",
		"global", "--state-dir", filepath.Join(dir, "global"), "--listen", api)
	reg := freeAddr()
	measure(*bin, "region server (embedded etcd, idle)", *idle, "https://"+reg+"/healthz",
		"region", "--id", "fra", "--ca-dir", filepath.Join(dir, "pki", "regions", "fra"), "--data-dir", filepath.Join(dir, "fra"),
		"--listen", reg, "--etcd-client-url", "https://"+freeAddr(), "--etcd-peer-url", "https://"+freeAddr())
}

func run(bin, dir string, args ...string) {
	cmd := exec.Command(bin, args...)
	cmd.Dir = dir
	if out, err := cmd.CombinedOutput(); err != nil {
		log.Fatalf("%s %s: %v\n%s", bin, strings.Join(args, " "), err, out)
	}
}

func freeAddr() string {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		log.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().String()
}

// measure starts a component, waits for its health URL, lets it idle, and
// prints its VmRSS.
func measure(bin, name string, idle time.Duration, health string, args ...string) {
	cmd := exec.Command(bin, args...)
	if err := cmd.Start(); err != nil {
		log.Fatal(err)
	}
	defer func() { cmd.Process.Kill(); cmd.Wait() }()
	c := &http.Client{Timeout: time.Second, Transport: &http.Transport{TLSClientConfig: &tls.Config{InsecureSkipVerify: true}}}
	deadline := time.Now().Add(30 * time.Second)
	for {
		resp, err := c.Get(health)
		if err == nil {
			resp.Body.Close()
			break
		}
		if time.Now().After(deadline) {
			log.Fatalf("%s did not come up: %v", name, err)
		}
		time.Sleep(50 * time.Millisecond)
	}
	time.Sleep(idle)
	fmt.Printf("%-40s RSS %6.1f MB\n", name, float64(rssKB(cmd.Process.Pid))/1024)
}

func rssKB(pid int) int {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/status")
	if err != nil {
		log.Fatal(err)
	}
	for _, line := range strings.Split(string(b), "\n") {
		if strings.HasPrefix(line, "VmRSS:") {
			n, _ := strconv.Atoi(strings.Fields(line)[1])
			return n
		}
	}
	return 0
}
