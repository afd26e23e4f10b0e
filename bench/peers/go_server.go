// Go net/http peer for bench/run.py: answers every path with 200 "ok\n". Built in a tmp dir at
// bench time (never committed as a binary). Usage: go_server 127.0.0.1:PORT MAX_SECONDS
package main

import (
	"net/http"
	"os"
	"strconv"
	"time"
)

func main() {
	if secs, err := strconv.Atoi(os.Args[2]); err == nil {
		time.AfterFunc(time.Duration(secs)*time.Second, func() { os.Exit(0) }) // bounded life
	}
	http.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/plain")
		w.Write([]byte("ok\n"))
	})
	if err := http.ListenAndServe(os.Args[1], nil); err != nil {
		os.Stderr.WriteString(err.Error() + "\n")
		os.Exit(1)
	}
}
