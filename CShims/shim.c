#include "CNetfilter.h"
