// Package unix is a test fixture standing in for golang.org/x/sys/unix
// (testdata is GOPATH-mode and cannot see the module cache): the checker
// matches it by import path only.
package unix

// EAGAIN is an errno constant.
const EAGAIN = 11

// Stdin is process-wide OS state.
var Stdin = 0

// Getpagesize stands for any system call wrapper.
func Getpagesize() int { return 4096 }
