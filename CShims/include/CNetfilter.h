#ifndef RAMPART_CNETFILTER_H
#define RAMPART_CNETFILTER_H
// Order matters: <sys/socket.h> and <netinet/in.h> before any linux/ or libnftnl/ header,
// or Clang's modules see two definitions of in_addr.
#include <sys/socket.h>
#include <netinet/in.h>
#endif
