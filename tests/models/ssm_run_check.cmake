# ssm-run on the shipped KJV model: its greedy sample against the one transformers wrote in eval.json
# (tools/train_byte_mamba.py), ppl's JSON output, --scaling, then bad calls. (The held-out loss itself is checked
# against eval.json in models_test.)
# Variables: SSM_RUN (the program), MODEL (folder), TEXT (held-out text), WORK (a scratch folder),
# PASSKEY_MODEL (the shipped passkey model, tools/train_passkey.py), RECALL_MODEL (a model with the
# global selection module, tools/train_global_selection.py).
file(READ "${MODEL}/eval.json" eval)

execute_process(COMMAND "${SSM_RUN}" generate "${MODEL}" --prompt "And God said" --tokens 200 --quiet
                OUTPUT_VARIABLE sample RESULT_VARIABLE rc)
string(JSON expected GET "${eval}" sample continuation_text)
if(NOT rc EQUAL 0 OR NOT sample STREQUAL "${expected}\n")
  message(FATAL_ERROR "greedy sample differs from transformers':\n${sample}\nexpected\n${expected}")
endif()

execute_process(COMMAND "${SSM_RUN}" ppl "${MODEL}" "${TEXT}" --window 128 --max-windows 2 --bin-width 32 --json
                OUTPUT_VARIABLE ppl RESULT_VARIABLE rc)
string(JSON bins LENGTH "${ppl}" bins)
string(JSON predicted GET "${ppl}" predicted_tokens)
if(NOT rc EQUAL 0 OR NOT bins EQUAL 4 OR NOT predicted EQUAL 254)
  message(FATAL_ERROR "ssm-run ppl --json: exit ${rc}, ${bins} bins, ${predicted} predicted tokens:\n${ppl}")
endif()

execute_process(COMMAND "${SSM_RUN}" ppl "${MODEL}" "${TEXT}" --window 1 ERROR_VARIABLE error RESULT_VARIABLE rc)
if(rc EQUAL 0 OR NOT error MATCHES "--window must be an integer >= 2, got '1'")
  message(FATAL_ERROR "bad --window: exit ${rc}, '${error}'")
endif()

# --scaling: unit factors change nothing; halving Δ in every layer changes the loss.
file(WRITE "${WORK}/unit.json" "{\"delta\": 1, \"a\": 1}")
file(WRITE "${WORK}/half.json" "{\"delta\": 0.5}")
execute_process(COMMAND "${SSM_RUN}" ppl "${MODEL}" "${TEXT}" --window 128 --max-windows 2 --json --quiet
                        --scaling "${WORK}/unit.json" OUTPUT_VARIABLE unit RESULT_VARIABLE rc)
string(JSON plain_loss GET "${ppl}" loss)
string(JSON unit_loss GET "${unit}" loss)
execute_process(COMMAND "${SSM_RUN}" ppl "${MODEL}" "${TEXT}" --window 128 --max-windows 2 --json --quiet
                        --scaling "${WORK}/half.json" OUTPUT_VARIABLE half)
string(JSON half_loss GET "${half}" loss)
# Equal to 10 digits (the last ones of a double vary with the summation order of the threads).
string(SUBSTRING "${plain_loss}" 0 12 plain_digits)
string(SUBSTRING "${unit_loss}" 0 12 unit_digits)
string(SUBSTRING "${half_loss}" 0 12 half_digits)
if(NOT rc EQUAL 0 OR NOT unit_digits STREQUAL plain_digits OR half_digits STREQUAL plain_digits)
  message(FATAL_ERROR "--scaling: plain ${plain_loss}, unit factors ${unit_loss}, Δ halved ${half_loss}")
endif()
file(WRITE "${WORK}/bad.json" "{\"layers\": [{}]}")
execute_process(COMMAND "${SSM_RUN}" ppl "${MODEL}" "${TEXT}" --scaling "${WORK}/bad.json" ERROR_VARIABLE error
                RESULT_VARIABLE rc)
if(rc EQUAL 0 OR NOT error MATCHES "\"layers\" must list 4 layers")
  message(FATAL_ERROR "bad --scaling file: exit ${rc}, '${error}'")
endif()

# calibrate: 1 + 4 layers x 2 factors (A's α and exponent) x 6 grid values evaluations; ppl with the
# file it wrote reproduces the loss it reports.
execute_process(COMMAND "${SSM_RUN}" calibrate "${MODEL}" "${TEXT}" --window 64 --max-windows 2 --passes 1
                        --factors a,power --out "${WORK}/calibrated.json" --json OUTPUT_VARIABLE calibrated RESULT_VARIABLE rc)
string(JSON evaluations GET "${calibrated}" evaluations)
string(JSON calibrated_loss GET "${calibrated}" loss)
execute_process(COMMAND "${SSM_RUN}" ppl "${MODEL}" "${TEXT}" --window 64 --max-windows 2 --json
                        --scaling "${WORK}/calibrated.json" OUTPUT_VARIABLE check)
string(JSON check_loss GET "${check}" loss)
string(SUBSTRING "${calibrated_loss}" 0 12 calibrated_digits)
string(SUBSTRING "${check_loss}" 0 12 check_digits)
if(NOT rc EQUAL 0 OR NOT evaluations EQUAL 49 OR NOT calibrated_digits STREQUAL check_digits)
  message(FATAL_ERROR "calibrate: exit ${rc}, ${evaluations} evaluations, loss ${calibrated_loss}; ppl with its file: ${check_loss}")
endif()

# --spectrum-percentiles: 0,100 clips nothing; a malformed value is named.
execute_process(COMMAND "${SSM_RUN}" ppl "${MODEL}" "${TEXT}" --window 128 --max-windows 2 --json --quiet
                        --spectrum-percentiles 0,100 OUTPUT_VARIABLE unclipped RESULT_VARIABLE rc)
string(JSON unclipped_loss GET "${unclipped}" loss)
string(SUBSTRING "${unclipped_loss}" 0 12 unclipped_digits)
execute_process(COMMAND "${SSM_RUN}" ppl "${MODEL}" "${TEXT}" --spectrum-percentiles 5 ERROR_VARIABLE error
                RESULT_VARIABLE bad_rc)
if(NOT rc EQUAL 0 OR NOT unclipped_digits STREQUAL plain_digits OR bad_rc EQUAL 0
   OR NOT error MATCHES "--spectrum-percentiles must be LOW,HIGH")
  message(FATAL_ERROR "--spectrum-percentiles: 0,100 gives ${unclipped_loss} (plain ${plain_loss}); '5': exit ${bad_rc}, '${error}'")
endif()

# Decimation: ppl scores the last --score-last positions, which decimation must keep; the last bin of a
# decimating run that keeps every token equals the plain run's; without --score-last it is refused.
execute_process(COMMAND "${SSM_RUN}" ppl "${MODEL}" "${TEXT}" --window 128 --max-windows 2 --json --quiet
                        --score-last 32 OUTPUT_VARIABLE scored RESULT_VARIABLE rc)
execute_process(COMMAND "${SSM_RUN}" ppl "${MODEL}" "${TEXT}" --window 128 --max-windows 2 --json --quiet
                        --score-last 32 --decimate 1,2 --decimation-base 200 OUTPUT_VARIABLE kept_all RESULT_VARIABLE rc2)
execute_process(COMMAND "${SSM_RUN}" ppl "${MODEL}" "${TEXT}" --window 128 --max-windows 2 --json --quiet
                        --score-last 32 --decimate 1,2 --decimation-base 40 OUTPUT_VARIABLE decimated RESULT_VARIABLE rc3)
string(JSON scored_tokens GET "${scored}" predicted_tokens)
string(JSON scored_start GET "${scored}" bins 0 start)
string(JSON scored_loss GET "${scored}" loss)
string(JSON kept_loss GET "${kept_all}" loss)
string(JSON decimated_loss GET "${decimated}" loss)
string(SUBSTRING "${scored_loss}" 0 12 scored_digits)
string(SUBSTRING "${kept_loss}" 0 12 kept_digits)
string(SUBSTRING "${decimated_loss}" 0 12 decimated_digits)
if(NOT rc EQUAL 0 OR NOT rc2 EQUAL 0 OR NOT rc3 EQUAL 0 OR NOT scored_tokens EQUAL 64 OR NOT scored_start EQUAL 96
   OR NOT kept_digits STREQUAL scored_digits OR decimated_digits STREQUAL scored_digits)
  message(FATAL_ERROR "ppl --score-last 32: exit ${rc}/${rc2}/${rc3}, ${scored_tokens} tokens from ${scored_start}, "
                      "loss ${scored_loss}; decimation keeping all: ${kept_loss}, to 40 tokens: ${decimated_loss}")
endif()
execute_process(COMMAND "${SSM_RUN}" ppl "${MODEL}" "${TEXT}" --decimate 2 ERROR_VARIABLE error RESULT_VARIABLE rc)
if(rc EQUAL 0 OR NOT error MATCHES "ppl with decimation needs --score-last N")
  message(FATAL_ERROR "--decimate without --score-last: exit ${rc}, '${error}'")
endif()
execute_process(COMMAND "${SSM_RUN}" ppl "${MODEL}" "${TEXT}" --decimate 4 --score-last 5 ERROR_VARIABLE error RESULT_VARIABLE rc)
if(rc EQUAL 0 OR NOT error MATCHES "decimating layer 4 is outside the model's 4 layers")
  message(FATAL_ERROR "--decimate 4: exit ${rc}, '${error}'")
endif()

# passkey: a grid of lengths x depths, one cell each, in JSON; a length too short for the needle is named.
execute_process(COMMAND "${SSM_RUN}" passkey "${MODEL}" --lengths 150,300 --depths 0,1 --trials 2 --json
                OUTPUT_VARIABLE grid RESULT_VARIABLE rc)
string(JSON cells LENGTH "${grid}" cells)
string(JSON last_length GET "${grid}" cells 3 length)
execute_process(COMMAND "${SSM_RUN}" passkey "${MODEL}" --lengths 50 ERROR_VARIABLE error RESULT_VARIABLE bad_rc)
if(NOT rc EQUAL 0 OR NOT cells EQUAL 4 OR NOT last_length EQUAL 300 OR bad_rc EQUAL 0
   OR NOT error MATCHES "length 50 is shorter than the needle and the question")
  message(FATAL_ERROR "passkey: exit ${rc}, ${cells} cells, last length ${last_length}; --lengths 50: '${error}'")
endif()

# The shipped passkey model retrieves every key at its training length: the prompts ssm-run builds are
# the ones it was trained on (tools/passkey_format.py).
execute_process(COMMAND "${SSM_RUN}" passkey "${PASSKEY_MODEL}" --lengths 256 --depths 0,0.5,1 --trials 4 --json
                OUTPUT_VARIABLE grid RESULT_VARIABLE rc)
foreach(cell 0 1 2)
  string(JSON accuracy GET "${grid}" cells ${cell} accuracy)
  if(NOT rc EQUAL 0 OR NOT accuracy EQUAL 1)
    message(FATAL_ERROR "passkey-mamba1 at 256 bytes: exit ${rc}, cell ${cell} accuracy ${accuracy}:\n${grid}")
  endif()
endforeach()

# info names the global selection module of a model that has one.
execute_process(COMMAND "${SSM_RUN}" info "${RECALL_MODEL}" --json OUTPUT_VARIABLE info RESULT_VARIABLE rc)
string(JSON kernel GET "${info}" global_selection_kernel)
if(NOT rc EQUAL 0 OR NOT kernel EQUAL 128)
  message(FATAL_ERROR "info on a model with global selection: exit ${rc}:\n${info}")
endif()
