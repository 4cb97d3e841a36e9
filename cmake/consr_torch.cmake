# CONSR_ENABLE_TORCH: the LibTorch adapter target consr::torch (header consr/adapters/torch.hpp).
#
# One installation only. Torch's own config loads its Caffe2 config with
# `find_package(Caffe2 PATHS <its dir>/../Caffe2)` and its extra libraries with
# `find_library(c10 PATHS <its prefix>/lib)`: both search the system paths BEFORE those PATHS. On a
# machine that also has Debian's libtorch-dev, a pip torch's config (Torch_DIR) therefore picks
# Debian's Caffe2 targets and 1.13 libraries while its include directories stay the wheel's, and the
# result compiles against 2.x headers, links 1.13 and fails to load (undefined symbol). So:
#   1. locate the Torch config first (Torch_DIR, or the usual find_package search, without loading it);
#   2. pin Caffe2_DIR to that installation and put its prefix first on the search path while
#      Torch's config runs (stale library entries of an earlier configure are dropped);
#   3. check that every Torch library (imported targets and found files) lies in that installation,
#      fail naming the strays otherwise, and say which installation was used.
set(CONSR_HAS_TORCH OFF)

# Directory of every Torch library in `out` (imported targets' locations and plain files of
# TORCH_LIBRARIES / TORCH_CUDA_LIBRARIES / the find_library results of Torch's config).
function(consr_torch_library_files out)
  set(files "")
  foreach(target IN ITEMS torch torch_library torch_cpu torch_cuda torch_cuda_linalg c10 c10_cuda)
    if(NOT TARGET ${target})
      continue()
    endif()
    get_target_property(type ${target} TYPE)
    get_target_property(imported ${target} IMPORTED)
    if(NOT imported OR type STREQUAL "INTERFACE_LIBRARY")
      continue()
    endif()
    get_target_property(configs ${target} IMPORTED_CONFIGURATIONS)
    set(props IMPORTED_LOCATION)
    foreach(config IN LISTS configs)
      string(TOUPPER "${config}" config)
      list(APPEND props IMPORTED_LOCATION_${config})
    endforeach()
    foreach(prop IN LISTS props)
      get_target_property(location ${target} ${prop})
      if(location)
        list(APPEND files "${target}=${location}")
      endif()
    endforeach()
  endforeach()
  foreach(item IN LISTS TORCH_LIBRARIES TORCH_CUDA_LIBRARIES c10_LIBRARY TORCH_LIBRARY C10_CUDA_LIBRARY kineto_LIBRARY)
    if(item MATCHES "^/" AND item MATCHES "/lib(torch|c10|caffe2|kineto)[^/]*$")
      list(APPEND files "${item}")
    endif()
  endforeach()
  list(REMOVE_DUPLICATES files)
  set(${out} "${files}" PARENT_SCOPE)
endfunction()

if(NOT CONSR_ENABLE_TORCH STREQUAL "OFF")
  # 1. Where is the Torch config? Loading TorchConfigVersion.cmake as the "config" finds the same
  #    directory find_package(Torch) would (Torch_DIR, Torch_ROOT, CMAKE_PREFIX_PATH, system) and
  #    runs nothing but version arithmetic.
  find_package(Torch CONFIG QUIET CONFIGS TorchConfigVersion.cmake)
  unset(PACKAGE_VERSION)
  unset(PACKAGE_VERSION_EXACT)
  unset(PACKAGE_VERSION_COMPATIBLE)
  unset(PACKAGE_VERSION_UNSUITABLE)
  set(consr_torch_saved_prefix_path "${CMAKE_PREFIX_PATH}")
  if(Torch_DIR AND EXISTS "${Torch_DIR}/TorchConfig.cmake")
    # 2. Pin Caffe2 to the directory Torch's config names, and search the installation's prefix
    #    first for the libraries it finds by name (the pip layout: <prefix>/share/cmake/Torch and
    #    <prefix>/lib; Debian's config sits one level deeper, where this prefix adds nothing).
    get_filename_component(consr_torch_config_dir "${Torch_DIR}" REALPATH)
    if(EXISTS "${consr_torch_config_dir}/../Caffe2/Caffe2Config.cmake")
      get_filename_component(consr_caffe2_dir "${consr_torch_config_dir}/../Caffe2" REALPATH)
      set(Caffe2_DIR "${consr_caffe2_dir}" CACHE PATH "Caffe2 config of the LibTorch at Torch_DIR (pinned by consr)" FORCE)
    endif()
    get_filename_component(consr_torch_prefix_guess "${consr_torch_config_dir}/../../.." REALPATH)
    list(PREPEND CMAKE_PREFIX_PATH "${consr_torch_prefix_guess}")
    foreach(var IN ITEMS c10_LIBRARY TORCH_LIBRARY C10_CUDA_LIBRARY kineto_LIBRARY CAFFE2_NVRTC_LIBRARY)
      unset(${var} CACHE)
    endforeach()
  endif()

  if(CONSR_ENABLE_TORCH STREQUAL "ON")
    find_package(Torch REQUIRED)
  else()
    find_package(Torch QUIET)
  endif()
  set(CMAKE_PREFIX_PATH "${consr_torch_saved_prefix_path}")

  if(TORCH_FOUND)
    # 3. One installation: every library in the directory of the `torch` target, inside the prefix
    #    Torch's config computed (TORCH_INSTALL_PREFIX), and Caffe2's config from the same place.
    consr_torch_library_files(consr_torch_files)
    get_filename_component(consr_torch_prefix "${TORCH_INSTALL_PREFIX}" REALPATH)
    set(consr_torch_libdir "")
    foreach(entry IN LISTS consr_torch_files)
      if(entry MATCHES "^torch=(.*)$")
        get_filename_component(consr_torch_libdir "${CMAKE_MATCH_1}" DIRECTORY)
        get_filename_component(consr_torch_libdir "${consr_torch_libdir}" REALPATH)
        break()
      endif()
    endforeach()
    set(consr_torch_strays "")
    foreach(entry IN LISTS consr_torch_files)
      string(REGEX REPLACE "^[a-z0-9_]+=" "" file "${entry}")
      get_filename_component(dir "${file}" DIRECTORY)
      get_filename_component(dir "${dir}" REALPATH)
      if(consr_torch_libdir AND NOT dir STREQUAL consr_torch_libdir)
        list(APPEND consr_torch_strays "${entry}")
      endif()
    endforeach()
    if(NOT consr_torch_libdir)
      list(APPEND consr_torch_strays "(no imported target 'torch' with a location)")
    else()
      string(FIND "${consr_torch_libdir}/" "${consr_torch_prefix}/" at)
      if(NOT at EQUAL 0)
        list(APPEND consr_torch_strays "torch=${consr_torch_libdir} (outside TORCH_INSTALL_PREFIX ${consr_torch_prefix})")
      endif()
    endif()
    if(Caffe2_DIR)
      get_filename_component(consr_caffe2_dir "${Caffe2_DIR}" REALPATH)
      string(FIND "${consr_caffe2_dir}/" "${consr_torch_prefix}/" at)
      if(NOT at EQUAL 0)
        list(APPEND consr_torch_strays "Caffe2_DIR=${consr_caffe2_dir}")
      endif()
    endif()
    if(consr_torch_strays)
      list(JOIN consr_torch_strays "\n    " consr_torch_strays_text)
      message(FATAL_ERROR
        "consr: LibTorch is a mix of installations. Torch_DIR=${Torch_DIR} (prefix ${consr_torch_prefix}, "
        "libraries in ${consr_torch_libdir}), but:\n    ${consr_torch_strays_text}\n"
        "Point Torch_DIR at one complete installation (pip: "
        "`python -c 'import torch; print(torch.utils.cmake_prefix_path)'`/Torch), or set "
        "CONSR_ENABLE_TORCH=OFF.")
    endif()

    set(CONSR_HAS_TORCH ON)
    set(CONSR_TORCH_LIBRARY_DIR "${consr_torch_libdir}" CACHE INTERNAL "directory of the LibTorch libraries consr links")
    add_library(consr_torch INTERFACE)
    add_library(consr::torch ALIAS consr_torch)
    set_target_properties(consr_torch PROPERTIES EXPORT_NAME torch)
    target_link_libraries(consr_torch INTERFACE consr ${TORCH_LIBRARIES})
    # A CUDA wheel's libtorch_cuda.so finds NCCL, cuDNN, cuSPARSELt, ... in the pip packages beside it
    # (its RPATH: $ORIGIN/../../nvidia/*/lib). Linking an executable resolves those dependencies
    # through the -rpath directories first, where Caffe2's CUDA targets put the system toolkit
    # (/usr/local/cuda/lib): an older libnccl.so.2 there fails the link (undefined ncclCommGrow, ...).
    # Let the linker look where the loader will.
    file(GLOB consr_torch_wheel_libdirs LIST_DIRECTORIES true "${consr_torch_prefix}/../nvidia/*/lib")
    foreach(dir IN LISTS consr_torch_wheel_libdirs)
      if(IS_DIRECTORY "${dir}")
        get_filename_component(dir "${dir}" REALPATH)
        target_link_options(consr_torch INTERFACE "LINKER:-rpath-link,${dir}")
      endif()
    endforeach()
    message(STATUS "consr: LibTorch ${Torch_VERSION} from ${consr_torch_prefix} (config ${Torch_DIR}; "
                   "libraries in ${consr_torch_libdir}); building the torch adapter")
  else()
    message(STATUS "consr: LibTorch not found; skipping the torch adapter, its tests and the pipeline")
  endif()
endif()
