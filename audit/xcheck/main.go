// Command xcheck verifies a byoc-agent audit log directory with Go's
// golang.org/x/mod/sumdb/note and golang.org/x/mod/sumdb/tlog: an
// implementation of signed notes and RFC 6962 trees independent of ours.
// The audit crate's tests run it (go_crosscheck.rs); see docs/audit-log.md.
//
// Usage: xcheck DIR   (exit 0 when every check passes)
package main

import (
	"bufio"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	"golang.org/x/mod/sumdb/note"
	"golang.org/x/mod/sumdb/tlog"
)

type hashes map[int64]tlog.Hash

func (h hashes) ReadHashes(idx []int64) ([]tlog.Hash, error) {
	out := make([]tlog.Hash, len(idx))
	for i, x := range idx {
		v, ok := h[x]
		if !ok {
			return nil, fmt.Errorf("no stored hash %d", x)
		}
		out[i] = v
	}
	return out, nil
}

type checkpoint struct {
	size int64
	root tlog.Hash
}

func parseCheckpoint(text, origin string) (checkpoint, error) {
	lines := strings.Split(text, "\n")
	if len(lines) < 4 || lines[0] != origin {
		return checkpoint{}, fmt.Errorf("not a checkpoint of %s: %q", origin, text)
	}
	n, err := strconv.ParseInt(lines[1], 10, 64)
	if err != nil {
		return checkpoint{}, err
	}
	raw, err := base64.StdEncoding.DecodeString(lines[2])
	if err != nil || len(raw) != tlog.HashSize {
		return checkpoint{}, fmt.Errorf("bad root %q", lines[2])
	}
	var h tlog.Hash
	copy(h[:], raw)
	return checkpoint{n, h}, nil
}

func fail(format string, a ...interface{}) {
	fmt.Fprintf(os.Stderr, "xcheck: "+format+"\n", a...)
	os.Exit(1)
}

func main() {
	if len(os.Args) != 2 {
		fail("usage: xcheck DIR")
	}
	dir := os.Args[1]
	vkey, err := os.ReadFile(filepath.Join(dir, "verifier.key"))
	if err != nil {
		fail("%v", err)
	}
	v, err := note.NewVerifier(strings.TrimSpace(string(vkey)))
	if err != nil {
		fail("verifier key: %v", err)
	}
	verifiers := note.VerifierList(v)
	open := func(msg string) checkpoint {
		n, err := note.Open([]byte(msg), verifiers)
		if err != nil {
			fail("note: %v", err)
		}
		cp, err := parseCheckpoint(n.Text, v.Name())
		if err != nil {
			fail("%v", err)
		}
		return cp
	}

	f, err := os.Open(filepath.Join(dir, "log.jsonl"))
	if err != nil {
		fail("%v", err)
	}
	stored := hashes{}
	var n int64
	var checkpoints []checkpoint
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 1<<20), 1<<26)
	for sc.Scan() {
		line := sc.Bytes()
		var e struct {
			Kind   string `json:"kind"`
			Detail struct {
				Note string `json:"note"`
			} `json:"detail"`
		}
		if err := json.Unmarshal(line, &e); err != nil {
			fail("entry %d: %v", n, err)
		}
		if e.Kind == "audit.checkpoint" {
			cp := open(e.Detail.Note)
			if cp.size != n {
				fail("entry %d: checkpoint of size %d", n, cp.size)
			}
			th, err := tlog.TreeHash(n, stored)
			if err != nil || th != cp.root {
				fail("entry %d: tree hash %v does not match the checkpoint %v (%v)", n, th, cp.root, err)
			}
			if len(checkpoints) > 0 {
				old := checkpoints[len(checkpoints)-1]
				p, err := tlog.ProveTree(n, old.size, stored)
				if err != nil {
					fail("prove tree: %v", err)
				}
				if err := tlog.CheckTree(p, n, cp.root, old.size, old.root); err != nil {
					fail("entry %d: not consistent with checkpoint %d: %v", n, old.size, err)
				}
			}
			checkpoints = append(checkpoints, cp)
		}
		hs, err := tlog.StoredHashes(n, line, stored)
		if err != nil {
			fail("%v", err)
		}
		for i, h := range hs {
			stored[tlog.StoredHashIndex(0, n)+int64(i)] = h
		}
		n++
	}
	if err := sc.Err(); err != nil {
		fail("%v", err)
	}

	receipts := 0
	if rf, err := os.Open(filepath.Join(dir, "receipts.jsonl")); err == nil {
		rs := bufio.NewScanner(rf)
		rs.Buffer(make([]byte, 1<<20), 1<<26)
		for rs.Scan() {
			var r struct {
				Op    string `json:"op"`
				Index int64  `json:"index"`
				Proof string `json:"proof"`
			}
			if err := json.Unmarshal(rs.Bytes(), &r); err != nil {
				fail("receipt: %v", err)
			}
			head, cpText, ok := strings.Cut(r.Proof, "\n\n")
			lines := strings.Split(head, "\n")
			if !ok || lines[0] != "c2sp.org/tlog-proof@v1" {
				fail("receipt of %s: not a tlog-proof", r.Op)
			}
			lines = lines[1:]
			var extra []byte
			if strings.HasPrefix(lines[0], "extra ") {
				extra, _ = base64.StdEncoding.DecodeString(strings.TrimPrefix(lines[0], "extra "))
				lines = lines[1:]
			}
			idx, err := strconv.ParseInt(strings.TrimPrefix(lines[0], "index "), 10, 64)
			if err != nil || idx != r.Index {
				fail("receipt of %s: bad index line %q", r.Op, lines[0])
			}
			var proof tlog.RecordProof
			for _, l := range lines[1:] {
				raw, err := base64.StdEncoding.DecodeString(l)
				if err != nil || len(raw) != tlog.HashSize {
					fail("receipt of %s: bad proof line", r.Op)
				}
				var h tlog.Hash
				copy(h[:], raw)
				proof = append(proof, h)
			}
			cp := open(cpText)
			hs, err := stored.ReadHashes([]int64{tlog.StoredHashIndex(0, idx)})
			if err != nil {
				fail("receipt of %s: entry %d is not in the log", r.Op, idx)
			}
			if extra != nil && tlog.RecordHash(extra) != hs[0] {
				fail("receipt of %s: its copy of entry %d differs from the log", r.Op, idx)
			}
			if err := tlog.CheckRecord(proof, cp.size, cp.root, idx, hs[0]); err != nil {
				fail("receipt of %s: %v", r.Op, err)
			}
			receipts++
		}
	}
	fmt.Printf("ok %d entries, %d checkpoints, %d receipts\n", n, len(checkpoints), receipts)
}
