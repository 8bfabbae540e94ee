// Command tool stands for a new binary: nothing in the allow-list names it,
// so it is held to every rule until a line there says why it need not be.
package main

import (
	"net"
	"net/http"
	"os/exec" // want `import "os/exec" starts real processes \[exec\]`
	"plugin"  // want `import "plugin" loads native code at run time \[plugin\]`
	"syscall"
)

func main() {
	l, _ := net.Listen("tcp", ":8080") // want `net\.Listen opens a real listening socket \[socket\]`
	http.Serve(l, nil)
	http.Get("http://x") // want `http\.Get uses http\.DefaultClient`
	exec.Command("etcd").Start()
	syscall.Kill(1, syscall.SIGTERM) // want `syscall\.Kill makes a raw system call \[syscall\]`
	plugin.Open("x.so")
}
