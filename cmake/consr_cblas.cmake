# CONSR_ENABLE_CBLAS: the opt-in target consr::cblas (consr + a BLAS with the CBLAS interface), for
# consr::cblas_gemm (consr/adapters/cblas_gemm.hpp), the GEMM policy of consr/linear_logprobs.hpp.
# Any BLAS that FindBLAS finds and that provides cblas.h and cblas_sgemm will do (pick one with
# BLA_VENDOR, e.g. -DBLA_VENDOR=OpenBLAS). On Debian, libblas-dev is the reference BLAS; installing
# libopenblas-dev switches the libblas.so.3 and cblas.h alternatives to OpenBLAS, which is what makes
# the policy fast (and LibTorch's own GEMMs, which go through the same libblas.so.3).
set(CONSR_ENABLE_CBLAS "AUTO" CACHE STRING "CBLAS GEMM backend consr::cblas: AUTO (when a BLAS with cblas.h is found), ON or OFF")
set_property(CACHE CONSR_ENABLE_CBLAS PROPERTY STRINGS AUTO ON OFF)
set(CONSR_HAS_CBLAS OFF)
if(NOT CONSR_ENABLE_CBLAS STREQUAL "OFF")
  find_package(BLAS QUIET)
  find_path(CONSR_CBLAS_INCLUDE_DIR cblas.h PATH_SUFFIXES openblas DOC "Directory of cblas.h for consr::cblas")
  if(BLAS_FOUND AND CONSR_CBLAS_INCLUDE_DIR)
    include(CheckCXXSourceCompiles)
    set(CMAKE_REQUIRED_INCLUDES "${CONSR_CBLAS_INCLUDE_DIR}")
    set(CMAKE_REQUIRED_LIBRARIES ${BLAS_LIBRARIES} ${BLAS_LINKER_FLAGS})
    set(CMAKE_REQUIRED_QUIET ON)
    check_cxx_source_compiles([=[
#include <cblas.h>
int main() {
  float a = 1, b = 1, c = 0;
  cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, 1, 1, 1, 1.0f, &a, 1, &b, 1, 0.0f, &c, 1);
  return 0;
}]=] CONSR_CBLAS_LINKS)
    unset(CMAKE_REQUIRED_INCLUDES)
    unset(CMAKE_REQUIRED_LIBRARIES)
    unset(CMAKE_REQUIRED_QUIET)
  endif()
  if(CONSR_CBLAS_LINKS)
    set(CONSR_HAS_CBLAS ON)
    add_library(consr_cblas INTERFACE)
    add_library(consr::cblas ALIAS consr_cblas)
    set_target_properties(consr_cblas PROPERTIES EXPORT_NAME cblas)
    target_include_directories(consr_cblas INTERFACE "$<BUILD_INTERFACE:${CONSR_CBLAS_INCLUDE_DIR}>")
    target_link_libraries(consr_cblas INTERFACE consr ${BLAS_LIBRARIES} ${BLAS_LINKER_FLAGS})
    message(STATUS "consr: CBLAS found (${BLAS_LIBRARIES}, ${CONSR_CBLAS_INCLUDE_DIR}/cblas.h); consr::cblas available")
  elseif(CONSR_ENABLE_CBLAS STREQUAL "ON")
    message(FATAL_ERROR "consr: CONSR_ENABLE_CBLAS=ON but no BLAS with cblas.h and cblas_sgemm was found "
                        "(Debian: libopenblas-dev; or set BLA_VENDOR / CONSR_CBLAS_INCLUDE_DIR)")
  else()
    message(STATUS "consr: no BLAS with cblas.h found; consr::cblas not available")
  endif()
endif()
