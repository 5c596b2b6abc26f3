package driver

import (
	"bytes"
	"fmt"
	"os"
	"strconv"
	"time"
)

// clockTicks is USER_HZ, the unit of times in /proc/<pid>/stat; it is 100
// on every Linux architecture Meridian runs on.
const clockTicks = 100

// procStat is the part of /proc/<pid>/stat the driver reads.
type procStat struct {
	State     byte
	PPid      int
	CPUTicks  uint64 // utime + stime + cutime + cstime
	StartTime uint64 // clock ticks after boot
	RSSPages  uint64
}

// readProcStat reads /proc/<pid>/stat under root ("/proc" normally).
func readProcStat(pid int) (procStat, error) {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return procStat{}, err
	}
	return parseProcStat(b)
}

func parseProcStat(b []byte) (procStat, error) {
	// The command name is in parentheses and may hold anything, including
	// spaces and parentheses: the fields start after the last ')'.
	i := bytes.LastIndexByte(b, ')')
	if i < 0 || i+2 >= len(b) {
		return procStat{}, fmt.Errorf("malformed /proc stat %q", b)
	}
	f := bytes.Fields(b[i+2:])
	// f[0] is field 3 (state) of proc(5).
	if len(f) < 22 {
		return procStat{}, fmt.Errorf("malformed /proc stat: %d fields", len(f)+2)
	}
	num := func(n int) uint64 { // n is the proc(5) field number
		v, _ := strconv.ParseUint(string(f[n-3]), 10, 64)
		return v
	}
	var st procStat
	st.State = f[0][0]
	st.PPid = int(num(4))
	st.CPUTicks = num(14) + num(15) + num(16) + num(17)
	st.StartTime = num(22)
	st.RSSPages = num(24)
	return st, nil
}

func ticksToDuration(t uint64) time.Duration {
	return time.Duration(t) * (time.Second / clockTicks)
}

// sameProcess reports whether pid runs and is the process that started at
// startTime (not a zombie, not a reuse of the pid).
func sameProcess(pid int, startTime uint64) (bool, string) {
	st, err := readProcStat(pid)
	if err != nil {
		return false, fmt.Sprintf("pid %d does not exist", pid)
	}
	if st.StartTime != startTime {
		return false, fmt.Sprintf("pid %d was reused by another process", pid)
	}
	if st.State == 'Z' || st.State == 'X' || st.State == 'x' {
		return false, fmt.Sprintf("pid %d has exited", pid)
	}
	return true, ""
}

// pidsInNamespaceOf lists the host pids of the processes in the PID
// namespace of pid (pid itself included), by scanning /proc.
func pidsInNamespaceOf(pid int) ([]int, error) {
	ns, err := os.Readlink("/proc/" + strconv.Itoa(pid) + "/ns/pid")
	if err != nil {
		return nil, err
	}
	d, err := os.Open("/proc")
	if err != nil {
		return nil, err
	}
	defer d.Close()
	names, err := d.Readdirnames(-1)
	if err != nil {
		return nil, err
	}
	var pids []int
	for _, n := range names {
		p, err := strconv.Atoi(n)
		if err != nil {
			continue
		}
		if l, err := os.Readlink("/proc/" + n + "/ns/pid"); err == nil && l == ns {
			pids = append(pids, p)
		}
	}
	return pids, nil
}

// readRSS returns the VmRSS of pid in bytes.
func readRSS(pid int) (uint64, error) {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/status")
	if err != nil {
		return 0, err
	}
	for line := range bytes.SplitSeq(b, []byte{'\n'}) {
		if v, ok := bytes.CutPrefix(line, []byte("VmRSS:")); ok {
			f := bytes.Fields(v)
			if len(f) == 0 {
				break
			}
			kb, err := strconv.ParseUint(string(f[0]), 10, 64)
			if err != nil {
				return 0, fmt.Errorf("VmRSS of pid %d: %w", pid, err)
			}
			return kb * 1024, nil
		}
	}
	return 0, fmt.Errorf("no VmRSS for pid %d", pid)
}
