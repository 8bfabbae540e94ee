// Command tool stands for a binary: cmd/... may wire real sockets,
// processes and signals, but not load plugins.
package main

import (
	"net"
	"net/http"
	"os/exec"
	"plugin" // want `import "plugin" loads native code at run time \[plugin\]`
	"syscall"
)

func main() {
	l, _ := net.Listen("tcp", ":8080")
	http.Serve(l, nil)
	http.Get("http://x")
	exec.Command("etcd").Start()
	syscall.Kill(1, syscall.SIGTERM)
	plugin.Open("x.so")
}
