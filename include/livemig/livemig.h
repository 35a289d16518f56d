/* Umbrella header for embedders of liblivemig. */
#ifndef LIVEMIG_LIVEMIG_H
#define LIVEMIG_LIVEMIG_H

#include "livemig/buffer.h"
#include "livemig/device.h"
#include "livemig/engine.h"
#include "livemig/error.h"
#include "livemig/log.h"
#include "livemig/ram.h"
#include "livemig/tls.h"
#include "livemig/vcpu.h"
#include "livemig/version.h"

#endif
